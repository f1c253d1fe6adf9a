"""The sink's tables: their definitions, the rows they take, and creating them.

With the ``timescaledb`` extension available and preloaded (``shared_preload_libraries``) the
tables are hypertables, with compression and retention policies when configured; otherwise
(PostgreSQL alone, or the extension installed but not preloaded or not creatable) they are
plain tables with the same keys plus a time index, and one warning says why.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from connectors.timescale.config import TimescaleSinkConfig
from wire.records import ms_to_datetime

__all__ = ["STREAM_TABLE", "TABLES", "ensure_schema", "row_for"]

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


def _timescale(conn: psycopg.Connection[Any], cfg: TimescaleSinkConfig) -> tuple[bool, str]:
    """Return (use hypertables, why not) after trying to enable the extension."""
    if not cfg.use_timescale:
        return False, "use_timescale is false"
    available = conn.execute(
        "select 1 from pg_available_extensions where name = 'timescaledb'"
    ).fetchone()
    if not available:
        return False, "the timescaledb extension is not installed on the server"
    try:
        with conn.transaction():
            conn.execute("create extension if not exists timescaledb")
    except psycopg.Error as e:
        # Installed but not preloaded (shared_preload_libraries), or no right to create it.
        return False, str(e).strip().splitlines()[0]
    return True, ""


def ensure_schema(conn: psycopg.Connection[Any], cfg: TimescaleSinkConfig) -> bool:
    """Create the schema and tables if needed; return True when they are hypertables."""
    s = cfg.db_schema
    with conn.transaction():
        conn.execute(f'create schema if not exists "{s}"')
    timescale, why = _timescale(conn, cfg)
    if not timescale and cfg.use_timescale:
        # Not installed: PostgreSQL alone, as intended. Installed but unusable: say why.
        level = logging.INFO if "not installed" in why else logging.WARNING
        log.log(level, "timescaledb sink: using plain PostgreSQL tables: %s", why)
    with conn.transaction():
        for t in TABLES.values():
            cols = ", ".join(f'"{c}" {typ}' for c, typ in t.columns)
            key = ", ".join(f'"{k}"' for k in t.key)
            conn.execute(
                f'create table if not exists "{s}"."{t.name}" ({cols}, primary key ({key}))'
            )
            if timescale:
                conn.execute(
                    "select create_hypertable(%s, %s, if_not_exists => true, migrate_data => true)",
                    (f'"{s}"."{t.name}"', t.time_column),
                )
                if cfg.compress_after is not None:
                    conn.execute(
                        f'alter table "{s}"."{t.name}" set (timescaledb.compress, '
                        f"timescaledb.compress_segmentby = 'path')"
                    )
                    conn.execute(
                        "select add_compression_policy(%s, %s::interval, if_not_exists => true)",
                        (f'"{s}"."{t.name}"', cfg.compress_after),
                    )
                if cfg.retain_for is not None:
                    conn.execute(
                        "select add_retention_policy(%s, %s::interval, if_not_exists => true)",
                        (f'"{s}"."{t.name}"', cfg.retain_for),
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
        "hypertables" if timescale else "plain PostgreSQL tables",
    )
    return timescale
