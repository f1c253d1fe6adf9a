"""A backtest's results, collected as they stream by, in bounded memory.

Rows go to a SQLite file next to the report (never a list in memory): the final revision of
each aggregate window and KPI (a re-emitted window replaces its earlier row), every raised or
cleared event, and the late points and dead letters with their reasons. :meth:`Collector.finish`
computes the report from it with ordered queries: counts, energy per tag, the events raised,
digests of every stream, and downsampled series of the tags to plot.

Digests leave out what depends on how the run went rather than on the data: a window's
``revision`` and ``closed_by``, a dead letter's wall-clock ``ts`` and ``source`` (the partition
or file that carried it, also inside its payload). Same input, same digests, whatever the
batching or partitioning.
"""

from __future__ import annotations

import fnmatch
import hashlib
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

__all__ = ["MAX_REASONS", "MAX_SERIES_POINTS", "Collector", "row_hash"]

MAX_SERIES_POINTS = 5_000
"""Points per plotted series at most (more than a screen shows): longer histories are plotted
from coarser windows, or from windows merged a few at a time."""
MAX_REASONS = 50
"""Distinct late / dead-letter reasons listed; the rest are counted as ``(other)``."""
_LISTED_EVENTS = 100_000

_SCHEMA = """
CREATE TABLE aggs(path TEXT, window_ms INTEGER, start_ms INTEGER, rev INTEGER, n INTEGER,
  mean REAL, min REAL, max REAL, energy REAL, energy_unit TEXT, h BLOB,
  PRIMARY KEY(path, window_ms, start_ms)) WITHOUT ROWID;
CREATE TABLE kpis(path TEXT, name TEXT, window_ms INTEGER, start_ms INTEGER, seq INTEGER,
  value REAL, unit TEXT, h BLOB, PRIMARY KEY(path, name, window_ms, start_ms)) WITHOUT ROWID;
CREATE TABLE events(kind TEXT, rule TEXT, path TEXT, ts_ms INTEGER, state TEXT, severity TEXT,
  message TEXT, value REAL, h BLOB);
CREATE TABLE letters(stream TEXT, reason TEXT, h BLOB);
"""

_SKIP = {
    "aggregates": ("revision", "closed_by"),
    "kpis": (),
    "events": (),
    "late": ("ts", "source"),
    "dead_letters": ("ts", "source"),
}


def row_hash(stream: str, row: dict[str, Any]) -> bytes:
    """Return the digest of ``row`` without the fields that do not come from the data."""
    skip = _SKIP.get(stream, ())
    body = {k: v for k, v in row.items() if k not in skip}
    payload = body.get("payload")
    if "source" in skip and isinstance(payload, dict) and "source" in payload:
        body["payload"] = {k: v for k, v in payload.items() if k != "source"}
    return hashlib.sha256(
        orjson.dumps(body, default=str, option=orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY)
    ).digest()


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


class Collector:
    """Streaming accumulation of a backtest's outputs; see the module docstring."""

    def __init__(self, db: Path, *, plot: tuple[str, ...] = ()) -> None:
        db.parent.mkdir(parents=True, exist_ok=True)
        db.unlink(missing_ok=True)
        self.db = db
        self.plot = plot
        self.sql = sqlite3.connect(db, isolation_level=None)
        self.sql.execute("PRAGMA journal_mode=OFF")
        self.sql.execute("PRAGMA synchronous=OFF")
        self.sql.executescript(_SCHEMA)
        self.points_read = 0
        self.first_ms: int | None = None
        self.last_ms: int | None = None
        self._seq = 0

    def read(self, n: int, first_ms: int, last_ms: int) -> None:
        """Count ``n`` input points whose times span ``[first_ms, last_ms]``."""
        self.points_read += n
        self.first_ms = first_ms if self.first_ms is None else min(self.first_ms, first_ms)
        self.last_ms = last_ms if self.last_ms is None else max(self.last_ms, last_ms)

    def add(self, stream: str, rows: list[dict[str, Any]]) -> None:
        """Take rows of one stream (aggregates, kpis, events, late, dead_letters)."""
        if not rows:
            return
        self.sql.execute("BEGIN")
        if stream == "aggregates":
            self.sql.executemany(
                "INSERT INTO aggs VALUES(?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT DO UPDATE SET "
                "rev=excluded.rev, n=excluded.n, mean=excluded.mean, min=excluded.min, "
                "max=excluded.max, energy=excluded.energy, energy_unit=excluded.energy_unit, "
                "h=excluded.h WHERE excluded.rev >= aggs.rev",
                [
                    (
                        r["path"],
                        r["window_ms"],
                        r["start_ms"],
                        int(r.get("revision", 0)),
                        int(r.get("count", 0)),
                        _num(r.get("mean")),
                        _num(r.get("min")),
                        _num(r.get("max")),
                        _num(r.get("energy")),
                        r.get("energy_unit"),
                        row_hash(stream, r),
                    )
                    for r in rows
                ],
            )
        elif stream == "kpis":
            params = []
            for r in rows:
                self._seq += 1
                params.append(
                    (
                        r["path"],
                        r["name"],
                        r["window_ms"],
                        r["start_ms"],
                        self._seq,
                        _num(r.get("value")),
                        r.get("unit", ""),
                        row_hash(stream, r),
                    )
                )
            self.sql.executemany(
                "INSERT INTO kpis VALUES(?,?,?,?,?,?,?,?) ON CONFLICT DO UPDATE SET "
                "seq=excluded.seq, value=excluded.value, unit=excluded.unit, h=excluded.h",
                params,
            )
        elif stream == "events":
            self.sql.executemany(
                "INSERT INTO events VALUES(?,?,?,?,?,?,?,?,?)",
                [
                    (
                        r.get("kind"),
                        r.get("rule"),
                        r.get("path"),
                        r.get("ts_ms"),
                        r.get("state"),
                        r.get("severity"),
                        r.get("message"),
                        _num((r.get("details") or {}).get("value")),
                        row_hash(stream, r),
                    )
                    for r in rows
                ],
            )
        else:
            self.sql.executemany(
                "INSERT INTO letters VALUES(?,?,?)",
                [(stream, str(r.get("reason", "")), row_hash(stream, r)) for r in rows],
            )
        self.sql.execute("COMMIT")

    # -- the report ---------------------------------------------------------------------------
    def _digest(self, query: str) -> str:
        h = hashlib.sha256()
        for (blob,) in self.sql.execute(query):
            h.update(blob)
        return h.hexdigest()

    def _reasons(self, stream: str) -> dict[str, int]:
        # Reasons carry values ("too-old: 12.3 s"): group by the part before the colon.
        counts: Counter[str] = Counter()
        for reason, n in self.sql.execute(
            "SELECT reason, count(*) FROM letters WHERE stream=? GROUP BY reason", (stream,)
        ):
            counts[str(reason).split(":", 1)[0]] += int(n)
        top = dict(counts.most_common(MAX_REASONS))
        rest = sum(counts.values()) - sum(top.values())
        if rest:
            top["(other)"] = rest
        return top

    def _plotted(self) -> list[str]:
        paths = [p for (p,) in self.sql.execute("SELECT DISTINCT path FROM aggs ORDER BY path")]
        if self.plot:
            return [
                p
                for p in paths
                if any(
                    fnmatch.fnmatchcase(p, g) or fnmatch.fnmatchcase(p.rsplit("/", 1)[-1], g)
                    for g in self.plot
                )
            ]
        ranked = [
            p
            for (p, _n) in self.sql.execute(
                "SELECT path, count(*) AS n FROM events WHERE state='raised' AND path IN "
                "(SELECT DISTINCT path FROM aggs) GROUP BY path ORDER BY n DESC, path LIMIT 6"
            )
        ]
        return ranked or paths[:4]

    def _series(self, paths: list[str]) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        windows = [w for (w,) in self.sql.execute("SELECT DISTINCT window_ms FROM aggs ORDER BY 1")]
        for path in paths:
            chosen = None
            for w in windows:
                (n,) = self.sql.execute(
                    "SELECT count(*) FROM aggs WHERE path=? AND window_ms=?", (path, w)
                ).fetchone()
                if n and (chosen is None or n <= MAX_SERIES_POINTS):
                    chosen = (w, n)
                    if n <= MAX_SERIES_POINTS:
                        break
            if chosen is None:
                continue
            w, n = chosen
            step = max(1, -(-n // MAX_SERIES_POINTS))
            # Longer series are merged, ``step`` windows at a time: the band keeps the true
            # extremes, the line the mean of the means.
            rows = self.sql.execute(
                "SELECT min(start_ms), avg(mean), min(min), max(max) FROM aggs "
                "WHERE path=? AND window_ms=? GROUP BY start_ms / ? ORDER BY 1",
                (path, w, w * step),
            )
            t: list[int] = []
            mean: list[float | None] = []
            lo: list[float | None] = []
            hi: list[float | None] = []
            for s, m, a, b in rows:
                t.append(int(s))
                mean.append(m)
                lo.append(a)
                hi.append(b)
            out[path] = {"window_ms": w, "every": step, "t": t, "mean": mean, "min": lo, "max": hi}
        return out

    def finish(self) -> dict[str, Any]:
        """Return the report (see :mod:`reports.backtest` for its fields)."""
        q = self.sql.execute
        windows = {
            int(w): {"windows": int(c), "points": int(n or 0)}
            for w, c, n in q("SELECT window_ms, count(*), sum(n) FROM aggs GROUP BY window_ms")
        }
        base = min(windows) if windows else None
        energy = {
            p: {"energy": e, "unit": u}
            for p, e, u in q(
                "SELECT path, sum(energy), max(energy_unit) FROM aggs WHERE window_ms=? "
                "AND energy IS NOT NULL GROUP BY path ORDER BY path",
                (base,),
            )
        }
        events = Counter(
            {
                f"{k}:{r}:{s}": int(n)
                for k, r, s, n in q(
                    "SELECT kind, rule, state, count(*) FROM events GROUP BY kind, rule, state"
                )
            }
        )
        raised = [
            [k, r, p, int(t)]
            for k, r, p, t in q(
                "SELECT kind, rule, path, ts_ms FROM events WHERE state='raised' "
                "ORDER BY kind, rule, path, ts_ms LIMIT ?",
                (_LISTED_EVENTS,),
            )
        ]
        markers = [
            {"kind": k, "rule": r, "path": p, "ts_ms": int(t), "state": s, "value": v, "message": m}
            for k, r, p, t, s, v, m in q(
                "SELECT kind, rule, path, ts_ms, state, value, message FROM events "
                "WHERE state IN ('raised', 'cleared') ORDER BY ts_ms, path, rule LIMIT 5000"
            )
        ]
        kpis = {
            f"{name}@{w}": {"windows": int(c), "mean": m, "min": lo, "max": hi}
            for name, w, c, m, lo, hi in q(
                "SELECT name, window_ms, count(*), avg(value), min(value), max(value) FROM kpis "
                "GROUP BY name, window_ms ORDER BY name, window_ms"
            )
        }
        counts = {s: int(n) for s, n in q("SELECT stream, count(*) FROM letters GROUP BY stream")}
        plotted = self._plotted()
        return {
            "points_read": self.points_read,
            "data_from_ms": self.first_ms,
            "data_to_ms": self.last_ms,
            "windows": {str(k): v for k, v in sorted(windows.items())},
            "energy": energy,
            "events": dict(sorted(events.items())),
            "raised": raised,
            "raised_listed_at_most": _LISTED_EVENTS,
            "kpis": kpis,
            "late": counts.get("late", 0),
            "late_reasons": self._reasons("late"),
            "dead_letters": counts.get("dead_letters", 0),
            "dead_letter_reasons": self._reasons("dead_letters"),
            "digests": {
                "aggregates": self._digest("SELECT h FROM aggs ORDER BY path, window_ms, start_ms"),
                "kpis": self._digest("SELECT h FROM kpis ORDER BY path, name, window_ms, start_ms"),
                "events": self._digest("SELECT h FROM events ORDER BY h"),
                "late": self._digest("SELECT h FROM letters WHERE stream='late' ORDER BY h"),
                "dead_letters": self._digest(
                    "SELECT h FROM letters WHERE stream='dead_letters' ORDER BY h"
                ),
            },
            "series": self._series(plotted),
            "markers": markers,
        }

    def close(self) -> None:
        """Close the database file (kept next to the report for ad-hoc queries)."""
        self.sql.close()
