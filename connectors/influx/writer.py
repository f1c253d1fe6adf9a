"""InfluxDB writer: line protocol over HTTP, v1 ``/write`` or v2 ``/api/v2/write``.

Rows become points with the ISA-95 context as tags (``enterprise, site, area, line, machine,
tag``) and millisecond timestamps:

- ``points``: field ``value``, tags ``unit``, ``quality``;
- ``aggregates``: measurement ``aggregates_1m`` / ``aggregates_15m``; fields count (integer),
  min, max, mean, std, sum, first, last, twa and energy (power tags);
- ``events``: tags kind, rule, severity, state; fields message and value when known;
- ``kpis``: tag name; field value.

Writes are batched and gzip-compressed. 5xx and 429 answers are retried with exponential
backoff (honouring ``Retry-After``) for up to ``retry_timeout_s``, then :class:`SinkError`.
A 400 (e.g. a field-type conflict) is narrowed down by bisection to the offending lines, which
are returned as dead letters with InfluxDB's reason; the other lines are written. Because a
point is identified by measurement, tags and time, re-sending a line overwrites it: writes
are idempotent.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import json
import logging
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from pydantic import SecretStr

from connectors.errors import SinkError
from connectors.influx.config import InfluxSinkConfig
from flows.logs import reveal
from wire.records import ISA95_LEVELS, DeadLetter, window_label

__all__ = ["InfluxWriter", "escape_key", "escape_tag", "line_for"]

log = logging.getLogger(__name__)


def escape_key(s: str) -> str:
    """Escape a measurement name (commas and spaces)."""
    return s.replace("\\", "\\\\").replace(",", "\\,").replace(" ", "\\ ")


def escape_tag(s: str) -> str:
    """Escape a tag key or value, or a field key (commas, equals signs, spaces)."""
    return escape_key(s).replace("=", "\\=")


def _field(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return f"{v}i"
    if isinstance(v, float):
        return repr(v) if v == v and v not in (float("inf"), float("-inf")) else None
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _line(measurement: str, tags: dict[str, str], fields: dict[str, Any], ts_ms: int) -> str:
    tag_part = "".join(
        f",{escape_tag(k)}={escape_tag(v)}" for k, v in sorted(tags.items()) if v != ""
    )
    encoded = [(k, _field(v)) for k, v in fields.items()]
    field_part = ",".join(f"{escape_tag(k)}={v}" for k, v in encoded if v is not None)
    if not field_part:
        msg = f"no writable fields for {measurement} {tags}"
        raise ValueError(msg)
    return f"{escape_key(measurement)}{tag_part} {field_part} {ts_ms}"


def _context(path: str) -> dict[str, str]:
    parts = path.split("/")
    tags = dict(zip(ISA95_LEVELS, parts[:5], strict=False))
    if len(parts) > 5:
        tags["tag"] = parts[5]
    return tags


def line_for(stream: str, row: dict[str, Any]) -> str:
    """Return the line-protocol line of one stream row."""
    if stream in ("raw", "points"):
        return _line(
            "points",
            {
                **_context(row["path"]),
                "unit": row.get("unit", ""),
                "quality": row.get("quality", "GOOD"),
            },
            {"value": float(row["value"])},
            row["ts_ms"],
        )
    if stream == "aggregates":
        fields = {
            k: row[k]
            for k in ("count", "min", "max", "mean", "std", "sum", "first", "last", "twa", "energy")
        }
        return _line(
            f"aggregates_{window_label(row['window_ms'])}",
            {**_context(row["path"]), "unit": row["unit"]},
            fields,
            row["start_ms"],
        )
    if stream == "events":
        value = row.get("details", {}).get("value")
        return _line(
            "events",
            {
                **_context(row["path"]),
                "kind": row["kind"],
                "rule": row["rule"],
                "severity": row["severity"],
                "state": row["state"],
            },
            {"message": row["message"], "value": value},
            row["ts_ms"],
        )
    if stream == "kpis":
        return _line(
            "kpis",
            {**_context(row["path"]), "name": row["name"]},
            {"value": float(row["value"])},
            row["start_ms"],
        )
    msg = f"stream {stream} cannot be written to InfluxDB"
    raise ValueError(msg)


class InfluxWriter:
    """Writes ``(stream, row)`` batches; returns dead letters for rejected lines.

    Credentials travel in the ``Authorization`` header (v1: Basic, v2: Token), never in the
    URL, so no proxy or access log sees them.
    """

    def __init__(self, cfg: InfluxSinkConfig) -> None:
        self.cfg = cfg
        self.url = cfg.url
        self.written = 0
        self._wait = threading.Event()

    def _endpoint(self) -> tuple[str, dict[str, str]]:
        cfg = self.cfg
        headers = {"Content-Type": "text/plain; charset=utf-8", "Content-Encoding": "gzip"}
        if cfg.api == "v2":
            q = {"org": cfg.org or "", "bucket": cfg.bucket or "", "precision": "ms"}
            if cfg.token is not None:
                headers["Authorization"] = f"Token {reveal(cfg.token)}"
            return f"{cfg.url.rstrip('/')}/api/v2/write?{urllib.parse.urlencode(q)}", headers
        q = {"db": cfg.database, "precision": "ms"}
        if cfg.retention_policy:
            q["rp"] = cfg.retention_policy
        if cfg.username:
            password = reveal(cfg.password) if cfg.password else ""
            basic = reveal(
                SecretStr(base64.b64encode(f"{cfg.username}:{password}".encode()).decode())
            )
            headers["Authorization"] = f"Basic {basic}"
        return f"{cfg.url.rstrip('/')}/write?{urllib.parse.urlencode(q)}", headers

    def _post(self, lines: list[str]) -> tuple[int, str]:
        url, headers = self._endpoint()
        body = gzip.compress("\n".join(lines).encode())
        req = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.cfg.timeout_s) as r:
                return r.status, ""
        except urllib.error.HTTPError as e:
            text = e.read().decode(errors="replace")
            retry_after = e.headers.get("Retry-After") if e.headers else None
            return e.code, f"{text}|retry-after={retry_after or ''}"
        except (urllib.error.URLError, OSError) as e:
            return 0, str(e)

    def _send(self, lines: list[str]) -> list[DeadLetter]:
        deadline = time.monotonic() + self.cfg.retry_timeout_s
        attempt = 0
        while True:
            status, detail = self._post(lines)
            if 200 <= status < 300:
                self.written += len(lines)
                return []
            # 401/403/404 say nothing about the data (credentials, permissions, a missing
            # database): they are retried like an outage, never bisected into dead letters.
            if status == 400 or (400 < status < 500 and status not in (401, 403, 404, 429)):
                if len(lines) == 1:
                    reason = detail.split("|retry-after=")[0].strip()
                    with contextlib.suppress(ValueError):
                        reason = json.loads(reason).get("error", reason)
                    return [
                        DeadLetter("influxdb", f"rejected ({status}): {reason}", {"line": lines[0]})
                    ]
                mid = len(lines) // 2
                return self._send(lines[:mid]) + self._send(lines[mid:])
            attempt += 1
            if time.monotonic() >= deadline:
                msg = (
                    f"InfluxDB at {self.url} did not accept {len(lines)} lines within "
                    f"{self.cfg.retry_timeout_s:g} s: status {status or 'unreachable'} {detail}"
                )
                raise SinkError(msg)
            after = detail.rsplit("retry-after=", 1)[-1] if "retry-after=" in detail else ""
            backoff = (
                float(after) if after.replace(".", "", 1).isdigit() else min(10.0, 0.2 * 2**attempt)
            )
            log.warning(
                "influxdb: status %s, retrying %d lines in %.1f s",
                status or "down",
                len(lines),
                backoff,
            )
            self._wait.wait(min(backoff, max(0.0, deadline - time.monotonic())))

    def write(self, items: list[tuple[str, dict[str, Any]]]) -> list[DeadLetter]:
        """Write a batch of ``(stream, row)``; unwritable rows come back as dead letters."""
        dead: list[DeadLetter] = []
        lines: list[str] = []
        for stream, row in items:
            if row.get("transient"):
                continue  # Sparkplug is_transient: of interest live, never historised
            try:
                lines.append(line_for(stream, row))
            except (ValueError, KeyError) as e:
                dead.append(DeadLetter("influxdb", f"unconvertible row: {e}", row))
        for i in range(0, len(lines), self.cfg.max_lines):
            dead += self._send(lines[i : i + self.cfg.max_lines])
        return dead
