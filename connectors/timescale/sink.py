"""TimescaleDB / PostgreSQL sink (psycopg 3): spooled, then COPY into staging and upsert.

Tables, views and policies are created on first use (:mod:`connectors.timescale.schema`);
every path written is entered once in the ``tags`` asset table with its ISA-95 levels. A
batch of spooled rows is written with COPY into a temporary staging table and
``INSERT ... ON CONFLICT DO UPDATE``, so re-emitted windows and replays after recovery
overwrite instead of duplicating.

The worker never waits for the database: the sink's step appends rows to a durable spool
(:mod:`connectors._spooled`, made durable at every epoch snapshot) and a writer thread moves
them to the database in transactions, oldest first. A database that is down, stopped or hung
(a full disk, a lock, SIGSTOP) only makes the spool grow, within its bounds; every other sink
keeps its pace and the flow's results do not change. Errors are classified:

- the connection failed, was lost or refused, the server is shutting down, a statement timed
  out, too many connections, the server's disk or memory is full, a serialization conflict
  (:func:`is_outage`): an outage; the
  rows stay spooled and the writer reconnects (first at once, then backing off up to
  ``max_backoff_s``);
- a write that has not returned for ``stall_after_s``: reported as a stall (the database
  hangs), once; the writer waits for it, off the worker;
- TimescaleDB's "tuple decompression limit exceeded" (a replay writing into compressed
  chunks): the limit is lifted for the sink's own session and the batch is written again;
- anything else the database refuses (a constraint, a type, SQLSTATE classes 22, 23, and the
  other limits of 53 and 54): the batch is split in halves until the offending rows are
  alone; they become dead letters with the database's reason (the step emits them), the
  others are written. Never retried forever.

Every state change is one log line and one event. At the end of a bounded run the writer
delivers what is left, up to ``close_timeout_s``; what it cannot is kept in the spool and the
run exits non-zero saying so.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from typing_extensions import override

from connectors._spool import Spool
from connectors._spooled import Outage, Report, Spooled, SpoolSettings, Writer
from connectors.timescale.config import TimescaleSinkConfig, reveal_dsn
from connectors.timescale.schema import (
    STREAM_TABLE,
    TABLES,
    TAG_LEVELS,
    ensure_schema,
    row_for,
    tag_row,
)
from wire.records import DeadLetter

__all__ = ["TimescaleDelivery", "is_outage", "rows_of", "spooled"]

log = logging.getLogger(__name__)


# SQLSTATEs that say "not now" (connection lost, server shutting down, statement timeout,
# too many connections, a full disk or no memory on the server, serialization conflict):
# they pass with time or an operator's action, whatever the rows, so the rows wait in the
# spool (within its bounds) and the writer retries. Any other refusal (a constraint, a type,
# the other limits of classes 53 and 54) is about the rows.
_OUTAGE_CLASSES = ("08", "40")
_OUTAGE_STATES = ("57P01", "57P02", "57P03", "57014", "53100", "53200", "53300")


def is_outage(e: psycopg.Error) -> bool:
    """Return True when ``e`` means the database cannot take rows now (retry them later)."""
    state = e.sqlstate
    if state is None:  # raised by the client: no connection, or it broke
        return isinstance(e, psycopg.OperationalError | psycopg.InterfaceError)
    return state[:2] in _OUTAGE_CLASSES or state in _OUTAGE_STATES


_DECOMPRESSION = "tuple decompression limit"
_UNIT_TABLES = ("points", "aggregates", "text_points")  # row[3] is the tag's unit
_PATH_COLUMN = {name: t.names.index("path") for name, t in TABLES.items()}
TableRow = tuple[str, tuple[Any, ...]]


class TimescaleDelivery(Writer):
    """Upserts spooled rows in transactions; refused rows become dead letters."""

    def __init__(
        self,
        cfg: TimescaleSinkConfig,
        spool: Spool,
        report: Callable[[Report], None],
        path: str,
    ) -> None:
        super().__init__(spool, report, name=cfg.id, endpoint=_where(cfg), path=path)
        self.cfg = cfg
        self.batch_rows, self.max_backoff_s = cfg.batch_rows, cfg.max_backoff_s
        self.stall_after_s = cfg.stall_after_s
        self.conn: psycopg.Connection[Any] | None = None
        self.schema_ready = False
        self.timescale = False
        self.tagged: dict[str, bool] = {}  # paths in ``tags`` -> whether with their unit
        self.limit_lifted = False

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
            self.tagged, self.limit_lifted = {}, False
        if not self.schema_ready:
            self.timescale = ensure_schema(self.conn, self.cfg)
            self.state_detail = "hypertables" if self.timescale else "plain PostgreSQL tables"
            self.schema_ready = True
        return self.conn

    @override
    def disconnect(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    # -- writing -----------------------------------------------------------------------
    def _write(self, rows: list[TableRow]) -> None:
        conn = self._connect()
        s = self.cfg.db_schema
        by_table: dict[str, list[tuple[Any, ...]]] = {}
        for table, row in rows:
            by_table.setdefault(table, []).append(row)
        tags = self._new_tags(rows)
        with conn.transaction():
            if tags:
                lv = ", ".join(f'"{c}"' for c in TAG_LEVELS)
                with conn.cursor() as cur:
                    cur.executemany(
                        f'insert into "{s}"."tags" (path, {lv}, unit) values '
                        f"(%s, {', '.join(['%s'] * len(TAG_LEVELS))}, %s) on conflict (path) do "
                        'update set unit = excluded.unit where "tags".unit is null',
                        [tag_row(p, u) for p, u in tags.items()],
                    )
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
        for path, unit in tags.items():
            self.tagged[path] = self.tagged.get(path, False) or unit is not None

    def _new_tags(self, rows: list[TableRow]) -> dict[str, str | None]:
        """Paths (with their unit, if the row has one) that ``tags`` may not hold yet."""
        new: dict[str, str | None] = {}
        for table, row in rows:
            path = row[_PATH_COLUMN[table]]
            unit = row[3] if table in _UNIT_TABLES else None
            known = self.tagged.get(path)
            if (known is None or (unit is not None and not known)) and (
                unit is not None or path not in new
            ):
                new[path] = unit
        return new

    def _isolate(self, rows: list[TableRow], raw: list[dict[str, Any]]) -> None:
        """Write rows; rows the database refuses become dead letters, the others are written."""
        try:
            self._connect()
        except psycopg.Error as e:  # refused, unreachable, or no right to the schema: not the rows
            raise Outage(_first_line(e)) from e
        try:
            self._write(rows)
        except psycopg.Error as e:
            if is_outage(e):
                raise Outage(_first_line(e)) from e
            if _DECOMPRESSION in str(e) and self.conn is not None and not self.limit_lifted:
                # A replay writing into compressed chunks: lift the limit for this session.
                self.conn.execute("set timescaledb.max_tuples_decompressed_per_dml_transaction = 0")
                self.limit_lifted = True
                log.warning("timescaledb sink: lifted the decompression limit for its session")
                self._isolate(rows, raw)
                return
            if len(rows) == 1:
                why = _first_line(e)
                state = getattr(e, "sqlstate", None) or "?"
                reason = f"refused by the database (SQLSTATE {state}): {why}"
                self.report(DeadLetter(self.cfg.id, reason, raw[0], source=self.cfg.id))
                return
            mid = len(rows) // 2
            self._isolate(rows[:mid], raw[:mid])
            self._isolate(rows[mid:], raw[mid:])

    @override
    def deliver(self, rows: list[tuple[str, dict[str, Any]]]) -> None:
        table_rows = [(STREAM_TABLE[st], row_for(STREAM_TABLE[st], d)) for st, d in rows]
        self._isolate(table_rows, [d for _, d in rows])


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _where(cfg: TimescaleSinkConfig) -> str:
    info = conninfo_to_dict(cfg.dsn.get_secret_value())
    host, port = info.get("host", "localhost"), info.get("port", 5432)
    return f"postgresql://{host}:{port}/{info.get('dbname', '')}"


def spooled(
    cfg: TimescaleSinkConfig,
    spool_dir: Path,
    path: str = "",
    resume: dict[str, int] | None = None,
) -> Spooled:
    """Build the spooled sink step's logic (the plugin does this per run; tools and benches too)."""

    def make(spool: Spool, report: Callable[[Report], None]) -> Writer:
        return TimescaleDelivery(cfg, spool, report, path)

    return Spooled(SpoolSettings.of(cfg, spool_dir, path), make, resume)


def rows_of(items: Iterable[tuple[str, dict[str, Any]]]) -> list[TableRow]:
    """Convert ``(stream, row)`` pairs to ``(table, tuple)`` pairs (for tests and tools)."""
    return [(STREAM_TABLE[s], row_for(STREAM_TABLE[s], d)) for s, d in items]
