"""TimescaleDB / PostgreSQL sink (psycopg 3): spooled, then COPY into staging and upsert.

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

The worker never waits for the database: ``write_batch`` appends rows to a durable spool
(:mod:`connectors._spool`, made durable at every epoch snapshot) and a writer thread moves them
to the database in transactions, oldest first. A database that is down, stopped or hung
(a full disk, a lock, SIGSTOP) only makes the spool grow, within its bounds; every other sink
keeps its pace and the flow's results do not change. Errors are classified:

- the connection failed, was lost or timed out: an outage; the rows stay spooled and the
  writer reconnects (first at once, then backing off up to ``max_backoff_s``);
- a write that has not returned for ``stall_after_s``: reported as a stall (the database
  hangs), once; the writer waits for it, off the worker;
- TimescaleDB's "tuple decompression limit exceeded" (a replay writing into compressed
  chunks): the limit is lifted for the sink's own session and the batch is written again;
- anything else the database refuses (a constraint, a type, SQLSTATE classes 22, 23, 53 and
  54): the batch is split in halves until the offending rows are alone; they become dead
  letters with the database's reason (through :mod:`flows.system`), the others are written.
  Never retried forever.

Every state change is one log line and one event. At the end of a bounded run the writer
delivers what is left, up to ``close_timeout_s``; what it cannot is kept in the spool and the
run exits non-zero saying so.
"""

from __future__ import annotations

import contextlib
import logging
import pickle
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
from psycopg.conninfo import conninfo_to_dict
from typing_extensions import override

from connectors._io import Backoff, Link
from connectors._spool import Spool
from connectors.timescale.config import TimescaleSinkConfig, reveal_dsn
from connectors.timescale.schema import STREAM_TABLE, TABLES, ensure_schema, row_for
from flows import system
from flows.lifecycle import fail_at_exit
from wire.records import DeadLetter, Event, now_ms

__all__ = ["TimescaleSink", "rows_of"]

log = logging.getLogger(__name__)


_OUTAGE = (psycopg.OperationalError, psycopg.InterfaceError)
_DECOMPRESSION = "tuple decompression limit"


class _Writer(threading.Thread):
    """Moves spooled rows into the database; never raises into the flow."""

    def __init__(self, part: _Partition) -> None:
        super().__init__(name=f"edgeflow-db-{part.sink.cfg.id}", daemon=True)
        self.part, self.sink, self.cfg = part, part.sink, part.sink.cfg
        self.spool = part.spool
        self.stop = threading.Event()
        self.draining = threading.Event()
        self.conn: psycopg.Connection[Any] | None = None
        self.schema_ready = False
        self.timescale = False
        self.written = 0
        self.busy_since: float | None = None
        self.link = Link(self.cfg.id, _where(self.cfg), part.path, system.post)
        self._watch = threading.Thread(target=self._watchdog, daemon=True)

    # -- connection and schema ---------------------------------------------------------
    def _connect(self) -> psycopg.Connection[Any]:
        if self.conn is None or self.conn.closed:
            self.conn = psycopg.connect(
                reveal_dsn(self.cfg.dsn),
                connect_timeout=max(1, int(self.cfg.connect_timeout_s)),
                # Statements outside a `with conn.transaction()` block commit at once: no
                # implicit transaction is ever left open around the writes.
                autocommit=True,
            )
            self.schema_ready = False
        if not self.schema_ready:
            self.timescale = ensure_schema(self.conn, self.cfg)
            self.schema_ready = True
        return self.conn

    def _disconnect(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    # -- writing -----------------------------------------------------------------------
    def _write(self, rows: list[tuple[str, tuple[Any, ...]]]) -> None:
        conn = self._connect()
        s = self.cfg.db_schema
        by_table: dict[str, list[tuple[Any, ...]]] = {}
        for table, row in rows:
            by_table.setdefault(table, []).append(row)
        self.busy_since = time.monotonic()
        try:
            with conn.transaction():
                for name, trows in by_table.items():
                    t = TABLES[name]
                    cols = ", ".join(f'"{c}"' for c in t.names)
                    stage = f"stage_{name}"
                    conn.execute(
                        f'create temporary table if not exists "{stage}" (like "{s}"."{name}" '
                        "including defaults) on commit delete rows"
                    )
                    # A window or event may appear twice in one batch (re-emission): keep
                    # the last.
                    dedup = {tuple(r[t.names.index(k)] for k in t.key): r for r in trows}
                    with conn.cursor().copy(f'copy "{stage}" ({cols}) from stdin') as cp:
                        for r in dedup.values():
                            cp.write_row(r)
                    updates = ", ".join(
                        f'"{c}" = excluded."{c}"' for c in t.names if c not in t.key
                    )
                    key = ", ".join(f'"{k}"' for k in t.key)
                    conn.execute(
                        f'insert into "{s}"."{name}" ({cols}) select {cols} from "{stage}" '
                        f"on conflict ({key}) do update set {updates}"
                    )
        finally:
            self.busy_since = None
        self.written += len(rows)

    def _write_or_isolate(self, rows: list[tuple[str, tuple[Any, ...]]], raw: list[Any]) -> None:
        """Write rows; rows the database refuses become dead letters, the others are written."""
        try:
            self._write(rows)
        except _OUTAGE:
            raise
        except psycopg.Error as e:
            if _DECOMPRESSION in str(e) and self.conn is not None:
                # A replay writing into compressed chunks: lift the limit for this session.
                self.conn.execute("set timescaledb.max_tuples_decompressed_per_dml_transaction = 0")
                log.warning("timescaledb sink: lifted the decompression limit for its session")
                self._write(rows)
                return
            if len(rows) == 1:
                why = str(e).strip().splitlines()[0]
                state = getattr(e, "sqlstate", None) or "?"
                system.post(
                    DeadLetter(
                        self.cfg.id,
                        f"refused by the database (SQLSTATE {state}): {why}",
                        raw[0],
                        source=self.cfg.id,
                    )
                )
                return
            mid = len(rows) // 2
            self._write_or_isolate(rows[:mid], raw[:mid])
            self._write_or_isolate(rows[mid:], raw[mid:])

    def _watchdog(self) -> None:
        while not self.stop.wait(1.0):
            since = self.busy_since
            if since is not None and time.monotonic() - since > self.cfg.stall_after_s:
                self.link.down(
                    f"a write has had no answer for {time.monotonic() - since:.0f} s (hung?); "
                    f"{self.spool.pending()} rows spooled"
                )

    def run(self) -> None:
        self._watch.start()
        backoff = Backoff(max_s=self.cfg.max_backoff_s)
        saved = 0.0
        while not self.stop.is_set():
            records = self.spool.read(self.spool.acked, self.cfg.batch_rows)
            if not records:
                if self.draining.is_set():
                    return
                self.stop.wait(0.05)
                continue
            raw = [pickle.loads(r.data) for r in records]
            rows = [(STREAM_TABLE[st], row_for(STREAM_TABLE[st], d)) for st, d in raw]
            try:
                self._write_or_isolate(rows, [d for _, d in raw])
            except _OUTAGE as e:
                self.link.down(
                    str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                )
                self._disconnect()
                self.stop.wait(backoff.next_delay())
                continue
            except Exception as e:  # a bug must not stop the writer silently
                log.exception("timescaledb sink: unexpected failure")
                self.link.down(f"{type(e).__name__}: {e}")
                self._disconnect()
                self.stop.wait(backoff.next_delay())
                continue
            self.spool.ack(records[-1].seq)
            if time.monotonic() - saved > 1.0:  # what is written is not written again
                self.spool.save_meta()
                saved = time.monotonic()
            self.link.up("tables: " + ("hypertables" if self.timescale else "plain PostgreSQL"))
            backoff.reset()


def _where(cfg: TimescaleSinkConfig) -> str:
    info = conninfo_to_dict(cfg.dsn.get_secret_value())
    host, port = info.get("host", "localhost"), info.get("port", 5432)
    return f"postgresql://{host}:{port}/{info.get('dbname', '')}"


class _Partition(StatefulSinkPartition[tuple[str, dict[str, Any]], dict[str, int]]):
    def __init__(self, sink: TimescaleSink, resume: dict[str, int] | None) -> None:
        self.sink = sink
        cfg = sink.cfg
        self.path = sink.path
        self.spool = Spool(
            sink.spool_dir,
            max_bytes=cfg.spool_max_bytes,
            max_age_s=cfg.spool_max_age_s,
            overflow=cfg.spool_overflow,
            on_overflow=self._overflow,
        )
        if isinstance(resume, dict):
            # Rows spooled after the snapshot are written again by the replay (upserts).
            self.spool.truncate(resume["seq"])
        self.writer = _Writer(self)
        self.writer.start()

    def _overflow(self, count: int, why: str) -> None:
        system.post(
            Event(
                kind="spool",
                rule=self.sink.cfg.id,
                path=self.path,
                ts_ms=now_ms(),
                severity="major",
                state="overflow",
                message=f"database spool: {count} rows dropped ({why})",
                details={"dropped": count, "policy": self.sink.cfg.spool_overflow},
            )
        )

    @property
    def written(self) -> int:
        """Rows written to the database so far (by this process)."""
        return self.writer.written

    @override
    def write_batch(self, items: list[tuple[str, dict[str, Any]]]) -> None:
        for stream, d in items:
            if d.get("transient"):
                continue  # Sparkplug is_transient: of interest live, never historised
            self.spool.append(pickle.dumps((stream, d), protocol=pickle.HIGHEST_PROTOCOL), 0)
        self.spool.flush()

    @override
    def snapshot(self) -> dict[str, int]:
        return {"seq": self.spool.sync()}

    @override
    def close(self) -> None:
        self.spool.sync()
        w = self.writer
        w.draining.set()
        w.join(self.sink.cfg.close_timeout_s)
        w.stop.set()
        w.join(2.0)
        left = self.spool.pending()
        self.spool.save_meta()
        self.spool.close()
        w._disconnect()
        if left:
            msg = (
                f"{left} rows for the database were not written within "
                f"{self.sink.cfg.close_timeout_s:g} s; they are kept in {self.spool.dir} and "
                "written by the next run"
            )
            log.error("timescaledb sink: %s", msg)
            fail_at_exit(msg)


@dataclass(frozen=True)
class TimescaleSink(FixedPartitionedSink[tuple[str, dict[str, Any]], dict[str, int]]):
    """Write ``(stream, row)`` items to PostgreSQL/TimescaleDB; see the module docs."""

    cfg: TimescaleSinkConfig
    spool_dir: Path
    path: str = ""

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
        self, step_id: str, for_part: str, resume_state: dict[str, int] | None
    ) -> _Partition:
        return _Partition(self, resume_state)


def rows_of(items: Iterable[tuple[str, dict[str, Any]]]) -> list[tuple[str, tuple[Any, ...]]]:
    """Convert ``(stream, row)`` pairs to ``(table, tuple)`` pairs (for tests and tools)."""
    return [(STREAM_TABLE[s], row_for(STREAM_TABLE[s], d)) for s, d in items]
