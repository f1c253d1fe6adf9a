"""TimescaleDB / PostgreSQL sink (psycopg 3): COPY into staging, upsert on the natural key.

Tables (created on first use in ``schema``):

- ``points (path, ts, value, unit, quality)``, key ``(path, ts)``;
- ``aggregates (path, window_ms, start_ts, ...)``, key ``(path, window_ms, start_ts)``, with
  views ``aggregates_1m`` and ``aggregates_15m``;
- ``events (kind, rule, path, ts, ...)``, key ``(kind, rule, path, ts)``;
- ``kpis (path, name, window_ms, start_ts, value, ...)``, key ``(path, name, window_ms, start_ts)``.

With the ``timescaledb`` extension available they become hypertables, with compression and
retention policies when configured; on plain PostgreSQL they are ordinary tables with the same
keys plus a time index. Rows are buffered in the sink partition; a batch is written with COPY
into a temporary staging table and ``INSERT ... ON CONFLICT DO UPDATE``, so re-emitted windows
and replays after recovery overwrite instead of duplicating.

Outages: when the database is unreachable the rows stay buffered (and in recovery snapshots)
and the next write retries after an exponential backoff. ``max_buffer_rows`` bounds the
buffer; when it is full the overflow policy decides: ``block`` (default) retries until the
database is back, holding up the flow (backpressure, nothing lost); ``fail`` raises
:class:`SinkError`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import psycopg
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
from psycopg.types.json import Jsonb
from typing_extensions import override

from connectors.errors import SinkError
from connectors.timescale.config import TimescaleSinkConfig, reveal_dsn
from wire.records import ms_to_datetime

__all__ = ["TABLES", "TimescaleSink", "row_for", "rows_of"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Table:
    name: str
    columns: tuple[tuple[str, str], ...]
    key: tuple[str, ...]
    time_column: str

    @property
    def names(self) -> list[str]:
        return [c for c, _ in self.columns]


TABLES: dict[str, _Table] = {
    "points": _Table(
        "points",
        (
            ("path", "text"),
            ("ts", "timestamptz"),
            ("value", "double precision"),
            ("unit", "text"),
            ("quality", "smallint"),
        ),
        ("path", "ts"),
        "ts",
    ),
    "aggregates": _Table(
        "aggregates",
        (
            ("path", "text"),
            ("window_ms", "integer"),
            ("start_ts", "timestamptz"),
            ("unit", "text"),
            ("count", "bigint"),
            ("min", "double precision"),
            ("max", "double precision"),
            ("mean", "double precision"),
            ("std", "double precision"),
            ("sum", "double precision"),
            ("first", "double precision"),
            ("last", "double precision"),
            ("twa", "double precision"),
            ("energy", "double precision"),
            ("energy_unit", "text"),
            ("closed_by", "text"),
        ),
        ("path", "window_ms", "start_ts"),
        "start_ts",
    ),
    "events": _Table(
        "events",
        (
            ("kind", "text"),
            ("rule", "text"),
            ("path", "text"),
            ("ts", "timestamptz"),
            ("severity", "text"),
            ("state", "text"),
            ("message", "text"),
            ("details", "jsonb"),
        ),
        ("kind", "rule", "path", "ts"),
        "ts",
    ),
    "kpis": _Table(
        "kpis",
        (
            ("path", "text"),
            ("name", "text"),
            ("window_ms", "integer"),
            ("start_ts", "timestamptz"),
            ("value", "double precision"),
            ("unit", "text"),
            ("details", "jsonb"),
        ),
        ("path", "name", "window_ms", "start_ts"),
        "start_ts",
    ),
}
STREAM_TABLE = {
    "raw": "points",
    "points": "points",
    "aggregates": "aggregates",
    "events": "events",
    "kpis": "kpis",
}


def row_for(table: str, d: dict[str, Any]) -> tuple[Any, ...]:
    """Turn a stream row (``flows.streams.rows_of`` form) into a table row tuple."""
    if table == "points":
        return (
            d["path"],
            ms_to_datetime(d["ts_ms"]),
            float(d["value"]),
            d.get("unit", ""),
            {"GOOD": 0, "UNCERTAIN": 1, "BAD": 2}[d.get("quality", "GOOD")],
        )
    if table == "aggregates":
        return (
            d["path"],
            d["window_ms"],
            ms_to_datetime(d["start_ms"]),
            d["unit"],
            d["count"],
            d["min"],
            d["max"],
            d["mean"],
            d["std"],
            d["sum"],
            d["first"],
            d["last"],
            d["twa"],
            d["energy"],
            d["energy_unit"],
            d["closed_by"],
        )
    if table == "events":
        return (
            d["kind"],
            d["rule"],
            d["path"],
            ms_to_datetime(d["ts_ms"]),
            d["severity"],
            d["state"],
            d["message"],
            Jsonb(d["details"]),
        )
    return (
        d["path"],
        d["name"],
        d["window_ms"],
        ms_to_datetime(d["start_ms"]),
        d["value"],
        d["unit"],
        Jsonb(d["details"]),
    )


class _Partition(
    StatefulSinkPartition[tuple[str, dict[str, Any]], list[tuple[str, tuple[Any, ...]]]]
):
    def __init__(self, sink: TimescaleSink, resume: list[tuple[str, tuple[Any, ...]]] | None):
        self.sink = sink
        self.buffer: list[tuple[str, tuple[Any, ...]]] = list(resume or [])
        self.conn: psycopg.Connection[Any] | None = None
        self.schema_ready = False
        self.timescale = False
        self.failures = 0
        self.retry_at = 0.0
        self.written = 0
        self._wait = threading.Event()

    # -- connection and schema ---------------------------------------------------------
    def _connect(self) -> psycopg.Connection[Any]:
        if self.conn is None or self.conn.closed:
            self.conn = psycopg.connect(
                reveal_dsn(self.sink.cfg.dsn),
                connect_timeout=max(1, int(self.sink.cfg.connect_timeout_s)),
                autocommit=False,
            )
            self.schema_ready = False
        if not self.schema_ready:
            self._ensure_schema(self.conn)
            self.schema_ready = True
        return self.conn

    def _ensure_schema(self, conn: psycopg.Connection[Any]) -> None:
        s = self.sink.schema
        with conn.transaction():
            conn.execute(f'create schema if not exists "{s}"')
            available = conn.execute(
                "select 1 from pg_available_extensions where name = 'timescaledb'"
            ).fetchone()
            if available and self.sink.cfg.use_timescale:
                conn.execute("create extension if not exists timescaledb")
                self.timescale = True
            for t in TABLES.values():
                cols = ", ".join(f'"{c}" {typ}' for c, typ in t.columns)
                key = ", ".join(f'"{k}"' for k in t.key)
                conn.execute(
                    f'create table if not exists "{s}"."{t.name}" ({cols}, primary key ({key}))'
                )
                if self.timescale:
                    conn.execute(
                        "select create_hypertable(%s, %s, if_not_exists => true, "
                        "migrate_data => true)",
                        (f'"{s}"."{t.name}"', t.time_column),
                    )
                    if self.sink.cfg.compress_after is not None:
                        conn.execute(
                            f'alter table "{s}"."{t.name}" set (timescaledb.compress, '
                            f"timescaledb.compress_segmentby = 'path')"
                        )
                        conn.execute(
                            "select add_compression_policy(%s, %s::interval, "
                            "if_not_exists => true)",
                            (f'"{s}"."{t.name}"', self.sink.cfg.compress_after),
                        )
                    if self.sink.cfg.retain_for is not None:
                        conn.execute(
                            "select add_retention_policy(%s, %s::interval, if_not_exists => true)",
                            (f'"{s}"."{t.name}"', self.sink.cfg.retain_for),
                        )
                else:
                    conn.execute(
                        f'create index if not exists "{t.name}_time_idx" on '
                        f'"{s}"."{t.name}" ("{t.time_column}")'
                    )
            for label, ms in (("1m", 60_000), ("15m", 900_000)):
                conn.execute(
                    f'create or replace view "{s}"."aggregates_{label}" as select * '
                    f'from "{s}"."aggregates" where window_ms = {ms}'
                )
        log.info(
            "timescaledb sink: schema %s ready (%s)",
            s,
            "hypertables" if self.timescale else "plain PostgreSQL tables",
        )

    # -- writing -----------------------------------------------------------------------
    def _write(self, rows: list[tuple[str, tuple[Any, ...]]]) -> None:
        conn = self._connect()
        s = self.sink.schema
        by_table: dict[str, list[tuple[Any, ...]]] = {}
        for table, row in rows:
            by_table.setdefault(table, []).append(row)
        with conn.transaction():
            for name, trows in by_table.items():
                t = TABLES[name]
                cols = ", ".join(f'"{c}"' for c in t.names)
                stage = f"stage_{name}"
                conn.execute(
                    f'create temporary table if not exists "{stage}" (like "{s}"."{name}" '
                    "including defaults) on commit delete rows"
                )
                # A window or event may appear twice in one batch (re-emission): keep the last.
                dedup = {tuple(r[t.names.index(k)] for k in t.key): r for r in trows}
                with conn.cursor().copy(f'copy "{stage}" ({cols}) from stdin') as cp:
                    for r in dedup.values():
                        cp.write_row(r)
                updates = ", ".join(f'"{c}" = excluded."{c}"' for c in t.names if c not in t.key)
                key = ", ".join(f'"{k}"' for k in t.key)
                conn.execute(
                    f'insert into "{s}"."{name}" ({cols}) select {cols} from "{stage}" '
                    f"on conflict ({key}) do update set {updates}"
                )
        self.written += len(rows)

    def _try_flush(self) -> bool:
        if not self.buffer:
            return True
        if time.monotonic() < self.retry_at:
            return False
        rows, self.buffer = self.buffer, []
        try:
            self._write(rows)
        except psycopg.OperationalError as e:
            self.buffer = rows + self.buffer
            self.failures += 1
            backoff = min(self.sink.cfg.max_backoff_s, 0.5 * 2 ** min(self.failures, 10))
            self.retry_at = time.monotonic() + backoff
            if self.conn is not None:
                self.conn.close()
            log.warning(
                "timescaledb sink: database unavailable (%s); %d rows buffered, retry in %.1f s",
                str(e).strip().splitlines()[0],
                len(self.buffer),
                backoff,
            )
            return False
        if self.failures:
            log.info("timescaledb sink: database back after %d failed attempts", self.failures)
        self.failures = 0
        return True

    @override
    def write_batch(self, items: list[tuple[str, dict[str, Any]]]) -> None:
        for stream, d in items:
            if d.get("transient"):
                continue  # Sparkplug is_transient: of interest live, never historised
            table = STREAM_TABLE[stream]
            self.buffer.append((table, row_for(table, d)))
        if self._try_flush():
            return
        while len(self.buffer) > self.sink.cfg.max_buffer_rows:
            if self.sink.cfg.overflow == "fail":
                msg = (
                    f"timescaledb sink buffer full ({len(self.buffer)} rows > "
                    f"{self.sink.cfg.max_buffer_rows}) and the database is unreachable"
                )
                raise SinkError(msg)
            # overflow == "block": hold the flow until the database takes the rows.
            self._wait.wait(max(0.0, self.retry_at - time.monotonic()))
            self._try_flush()

    @override
    def snapshot(self) -> list[tuple[str, tuple[Any, ...]]]:
        return list(self.buffer)

    @override
    def close(self) -> None:
        deadline = time.monotonic() + self.sink.cfg.close_timeout_s
        while self.buffer and time.monotonic() < deadline:
            if not self._try_flush():
                self._wait.wait(max(0.05, min(1.0, self.retry_at - time.monotonic())))
        if self.buffer:
            log.error("timescaledb sink: closing with %d rows not written", len(self.buffer))
        if self.conn is not None:
            self.conn.close()


@dataclass(frozen=True)
class TimescaleSink(
    FixedPartitionedSink[tuple[str, dict[str, Any]], list[tuple[str, tuple[Any, ...]]]]
):
    """Write ``(stream, row)`` items to PostgreSQL/TimescaleDB; see the module docs."""

    cfg: TimescaleSinkConfig

    @property
    def schema(self) -> str:
        """The database schema of the tables."""
        return self.cfg.db_schema

    @override
    def list_parts(self) -> list[str]:
        return ["timescaledb"]

    @override
    def part_fn(self, item_key: str) -> int:
        return 0

    @override
    def build_part(
        self, step_id: str, for_part: str, resume_state: list[tuple[str, tuple[Any, ...]]] | None
    ) -> _Partition:
        return _Partition(self, resume_state)


def rows_of(items: Iterable[tuple[str, dict[str, Any]]]) -> list[tuple[str, tuple[Any, ...]]]:
    """Convert ``(stream, row)`` pairs to ``(table, tuple)`` pairs (for tests and tools)."""
    return [(STREAM_TABLE[s], row_for(STREAM_TABLE[s], d)) for s, d in items]
