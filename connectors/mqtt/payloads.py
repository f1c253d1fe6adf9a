"""Plain MQTT payloads: JSON objects, bare JSON numbers or ASCII numbers, decoded totally.

:func:`parse_plain` turns any bytes into ``(value, quality, ts_ms)`` or raises
:class:`PayloadError` with the reason; nothing else ever escapes it, whatever arrives
(invalid UTF-8, 100k-deep nesting, ``Infinity``, a 400-digit number, ``"ts_ms": null``).
"""

from __future__ import annotations

import math
from typing import Any

import orjson

from connectors.errors import ConnectorError
from wire.records import Quality, to_ms

__all__ = ["MAX_TS_MS", "PayloadError", "check_ts", "parse_plain"]

# Timestamps are epoch milliseconds that fit every column they travel in (year 2248).
MAX_TS_MS = 1 << 43


class PayloadError(ConnectorError, ValueError):
    """A payload cannot be turned into a sample; the message is the reason."""


def check_ts(ts: Any) -> int:
    """Return ``ts`` as epoch ms if it is an integer in range, else raise PayloadError."""
    if isinstance(ts, bool) or not isinstance(ts, int | float):
        msg = f"timestamp {ts!r} is not a number of milliseconds"
        raise PayloadError(msg)
    if isinstance(ts, float) and not math.isfinite(ts):
        msg = f"timestamp {ts!r} is not finite"
        raise PayloadError(msg)
    if not 0 <= ts < MAX_TS_MS:
        msg = f"timestamp {ts!r} ms is outside 1970..2248"
        raise PayloadError(msg)
    return int(ts)


def _number(raw: Any) -> float:
    if isinstance(raw, bool):
        return float(raw)
    if not isinstance(raw, int | float):
        msg = f"value {str(raw)[:40]!r} is not a number"
        raise PayloadError(msg)
    try:
        value = float(raw)
    except OverflowError:
        msg = f"value {str(raw)[:40]}... does not fit a float"
        raise PayloadError(msg) from None
    if not math.isfinite(value):
        msg = f"value {value} is not finite"
        raise PayloadError(msg)
    return value


def parse_plain(
    payload: bytes, kind: str, received_ms: int, *, keep_text: bool = False
) -> tuple[float | str, int, int]:
    """Decode a plain payload to ``(value, quality, ts_ms)``.

    A string ``value`` in a JSON object is kept as text when ``keep_text`` (the tag is a
    declared text tag); otherwise a numeric string is coerced (``"12.5"`` -> 12.5) and any other
    string is an error.
    """
    try:
        text = payload.decode("utf-8").strip()
    except UnicodeDecodeError as e:
        msg = f"payload is not UTF-8: {e.reason} at byte {e.start}"
        raise PayloadError(msg) from None
    if kind == "number":
        try:
            return _number(float(text)), int(Quality.GOOD), received_ms
        except ValueError:
            msg = f"payload {text[:40]!r} is not a number"
            raise PayloadError(msg) from None
    try:
        doc = orjson.loads(text)  # bounded nesting depth, 64-bit integers, no NaN/Infinity
    except (orjson.JSONDecodeError, RecursionError) as e:
        msg = f"payload is not JSON: {e}"
        raise PayloadError(msg) from None
    if isinstance(doc, int | float) and not isinstance(doc, bool):
        return _number(doc), int(Quality.GOOD), received_ms
    if not isinstance(doc, dict) or "value" not in doc:
        msg = "JSON payload must be a number or an object with a 'value'"
        raise PayloadError(msg)
    raw = doc["value"]
    value: float | str
    if isinstance(raw, str):
        if keep_text:
            value = raw
        else:
            try:
                value = _number(float(raw.strip()))
            except ValueError:
                msg = f"value {raw[:40]!r} is not a number (declare text tags with text_tags)"
                raise PayloadError(msg) from None
    else:
        value = _number(raw)
    try:
        quality = int(Quality.parse(doc.get("quality", "GOOD")))
    except ValueError as e:
        raise PayloadError(str(e)) from None
    if "ts_ms" in doc:
        ts = check_ts(doc["ts_ms"])
    elif "timestamp" in doc:
        stamp = doc["timestamp"]
        if not isinstance(stamp, str | int):
            msg = f"timestamp {str(stamp)[:40]!r} is not ISO-8601 or epoch ms"
            raise PayloadError(msg)
        try:
            ts = check_ts(to_ms(stamp))
        except (ValueError, OverflowError, OSError) as e:
            raise PayloadError(str(e)) from None
    else:
        ts = received_ms
    return value, quality, ts
