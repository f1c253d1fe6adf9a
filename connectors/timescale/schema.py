"""The sink's tables: their definitions, the rows they take, and creating them.

Five data tables keyed on their natural keys, a ``tags`` asset table (path -> ISA-95 levels
and unit), ``<table>_isa95`` views joining it, and ``(path, time desc)`` indexes.

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
from connectors.timescale.policies import Current, plan
from wire.records import ms_to_datetime

__all__ = ["STREAM_TABLE", "TABLES", "TAG_LEVELS", "ensure_schema", "row_for", "tag_row"]

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
    "text_points": _Table(
        "text_points",
        (
            ("path", "text"),
            ("ts", "timestamptz"),
            ("value", "text"),
            ("unit", "text"),
            ("quality", "smallint"),
        ),
        ("path", "ts"),
        "ts",
    ),
}
STREAM_TABLE = {
    "raw": "points",
    "points": "points",
    "aggregates": "aggregates",
    "events": "events",
    "kpis": "kpis",
    "texts": "text_points",
}
#: The asset table: one row per tag path with its ISA-95 levels (``tags``, joined on path).
TAG_LEVELS = ("enterprise", "site", "area", "line", "machine", "tag")
_QUALITY = {"GOOD": 0, "UNCERTAIN": 1, "BAD": 2}


def tag_row(path: str, unit: str | None) -> tuple[str | None, ...]:
    """Return the ``tags`` row of a path: its levels (None where the path is shorter) and unit.

    A point's path has all six levels; a site or asset KPI's path stops at its shard.
    """
    parts: list[str | None] = list(path.split("/"))
    if len(parts) != len(TAG_LEVELS):
        shard = parts[: len(TAG_LEVELS) - 1]
        parts = [*shard, *[None] * (len(TAG_LEVELS) - len(shard))]
    levels = parts
    return (path, *levels, unit)


def row_for(table: str, d: dict[str, Any]) -> tuple[Any, ...]:
    """Turn a stream row (``flows.streams.rows_of`` form) into a table row tuple."""
    if table in ("points", "text_points"):
        return (
            d["path"],
            ms_to_datetime(d["ts_ms"]),
            float(d["value"]) if table == "points" else str(d["value"]),
            d.get("unit", ""),
            _QUALITY[d.get("quality", "GOOD")],
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
    """Create the schema, tables, views and indexes if needed; return True for hypertables.

    On TimescaleDB the policies are then made to match the config (:func:`sync_policies`).
    """
    s = cfg.db_schema
    with conn.transaction():
        conn.execute(f'create schema if not exists "{s}"')
    timescale, why = _timescale(conn, cfg)
    if not timescale and cfg.use_timescale:
        # Not installed: PostgreSQL alone, as intended. Installed but unusable: say why.
        level = logging.INFO if "not installed" in why else logging.WARNING
        log.log(level, "timescaledb sink: using plain PostgreSQL tables: %s", why)
    with conn.transaction():
        levels = ", ".join(f'"{c}" text' for c in TAG_LEVELS)
        conn.execute(
            f'create table if not exists "{s}"."tags" (path text primary key, {levels}, unit text)'
        )
        conn.execute(f'create index if not exists "tags_site_idx" on "{s}"."tags" (site, area)')
        for t in TABLES.values():
            cols = ", ".join(f'"{c}" {typ}' for c, typ in t.columns)
            key = ", ".join(f'"{k}"' for k in t.key)
            conn.execute(
                f'create table if not exists "{s}"."{t.name}" ({cols}, primary key ({key}))'
            )
            if timescale:
                _hypertable(conn, cfg, t)
            else:
                conn.execute(
                    f'create index if not exists "{t.name}_time_idx" on '
                    f'"{s}"."{t.name}" ("{t.time_column}")'
                )
            # The latest value of a tag, and one site's rows over a time range, via tags.path.
            conn.execute(
                f'create index if not exists "{t.name}_path_time_idx" on '
                f'"{s}"."{t.name}" (path, "{t.time_column}" desc)'
            )
        for label, ms in (("1m", 60_000), ("15m", 900_000)):
            conn.execute(
                f'create or replace view "{s}"."aggregates_{label}" as select * '
                f'from "{s}"."aggregates" where window_ms = {ms}'
            )
        for name in ("points", "aggregates", "events", "kpis", "text_points"):
            lv = ", ".join(f't."{c}"' for c in TAG_LEVELS)
            conn.execute(
                f'create or replace view "{s}"."{name}_isa95" as select {lv}, x.* '
                f'from "{s}"."{name}" x left join "{s}"."tags" t using (path)'
            )
    if timescale:
        sync_policies(conn, cfg)
    log.info(
        "timescaledb sink: schema %s ready (%s)",
        s,
        "hypertables" if timescale else "plain PostgreSQL tables",
    )
    return timescale


def _hypertable(conn: psycopg.Connection[Any], cfg: TimescaleSinkConfig, t: _Table) -> None:
    """Make ``t`` a hypertable with its chunk interval and compression settings."""
    s, r = cfg.db_schema, cfg.table(t.name)
    rel = f'"{s}"."{t.name}"'
    conn.execute(
        "select create_hypertable(%s, %s, chunk_time_interval => %s::interval, "
        "if_not_exists => true, migrate_data => true)",
        (rel, t.time_column, r.chunk_interval),
    )
    # New chunks take the configured interval (existing ones keep theirs).
    conn.execute("select set_chunk_time_interval(%s, %s::interval)", (rel, r.chunk_interval))
    if r.compress_after is None:
        return
    segmentby = ", ".join(r.segmentby)
    try:
        with conn.transaction():
            conn.execute(
                f"alter table {rel} set (timescaledb.compress, "
                f"timescaledb.compress_segmentby = '{segmentby}', "
                f"timescaledb.compress_orderby = '{r.orderby}')"
            )
    except psycopg.Error as e:
        # Changing them with compressed chunks present is refused; the old ones stay.
        log.warning(
            "timescaledb sink: %s keeps its compression settings: %s",
            t.name,
            str(e).strip().splitlines()[0],
        )


def sync_policies(conn: psycopg.Connection[Any], cfg: TimescaleSinkConfig) -> list[str]:
    """Add, alter or remove compression and retention policies to match the config.

    One log line says what changed (or that nothing did); returns the changes.
    """
    found = conn.execute(
        "select hypertable_name, proc_name, job_id, "
        "coalesce(config->>'compress_after', config->>'drop_after')::interval "
        "from timescaledb_information.jobs where hypertable_schema = %s "
        "and proc_name in ('policy_compression', 'policy_retention')",
        (cfg.db_schema,),
    ).fetchall()
    current = [
        Current(table, "compression" if proc == "policy_compression" else "retention", job, iv)
        for table, proc, job, iv in found
    ]
    statements, changes = plan(cfg.db_schema, cfg.policies(), current)
    with conn.transaction():
        for sql, params in statements:
            conn.execute(sql, params)
    log.info("timescaledb sink: policies %s", "; ".join(changes) if changes else "unchanged")
    return changes
