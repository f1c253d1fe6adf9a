"""The database sink against real PostgreSQL: its schema, and what it does with refused rows.

TimescaleDB is not installed here, so these run the plain-PostgreSQL path. The errors a
TimescaleDB server raises (SQLSTATE 53400 "tuple decompression limit exceeded", class 54
limits) are raised by triggers with the same SQLSTATE and text, on the same statements.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from connectors.timescale.config import TimescaleSinkConfig
from connectors.timescale.schema import ensure_schema
from connectors.timescale.sink import spooled
from tests.conftest import require_port
from wire.records import DeadLetter, Event, Isa95, Point, Quality, TextPoints

pytestmark = pytest.mark.integration

CTX = Isa95("acme", "plant-1", "pv", "array-1", "inv-01")
T0 = 1_780_300_800_000


@pytest.fixture
def schema(endpoints) -> Iterator[str]:
    info = psycopg.conninfo.conninfo_to_dict(endpoints.pg_dsn)
    require_port(info.get("host", "127.0.0.1"), int(info.get("port", 5432)), "PostgreSQL")
    name = f"t_{uuid.uuid4().hex[:10]}"
    yield name
    with psycopg.connect(endpoints.pg_dsn, autocommit=True) as conn:
        conn.execute(f'drop schema if exists "{name}" cascade')


def _cfg(endpoints, schema: str, **kw: Any) -> TimescaleSinkConfig:
    return TimescaleSinkConfig.model_validate(
        {
            "type": "timescaledb",
            "dsn": endpoints.pg_dsn,
            "schema": schema,
            "streams": ["points", "aggregates", "events", "kpis", "texts"],
            "close_timeout_s": 20,
            **kw,
        }
    )


def _run(cfg: TimescaleSinkConfig, tmp_path: Path, rows: list[tuple[str, dict[str, Any]]]):
    """Write ``rows`` through the spooled sink to the end of input; return what it reported."""
    step = spooled(cfg, tmp_path / "spool")
    reports = list(step.on_batch(rows)[0])
    reports += list(step.on_eof()[0])
    return reports, step


def _aggregate_rows(counts: list[int]) -> list[tuple[str, dict[str, Any]]]:
    stats = dict.fromkeys(("min", "max", "mean", "sum", "first", "last", "twa", "energy"), 1.0)
    return [
        (
            "aggregates",
            {
                "path": f"{CTX.path}/ac_power",
                "window_ms": 60_000,
                "start_ms": T0 + i * 60_000,
                "unit": "kW",
                "count": n,
                **stats,
                "std": 0.0,
                "energy_unit": "kWh",
                "closed_by": "watermark",
            },
        )
        for i, n in enumerate(counts)
    ]


def _create(endpoints, cfg: TimescaleSinkConfig) -> None:
    with psycopg.connect(endpoints.pg_dsn, autocommit=True) as conn:
        ensure_schema(conn, cfg)


def _db(endpoints, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(endpoints.pg_dsn, autocommit=True) as conn:
        cur = conn.execute(sql, params or None)
        return cur.fetchall() if cur.description else []


def test_the_schema_names_isa95_levels_keeps_text_values_and_indexes_the_common_queries(
    endpoints, schema, tmp_path, caplog
):
    power = Point(T0, CTX, "ac_power", 42.5, "kW", Quality.GOOD, "t")
    mode = Point(T0, CTX, "mode", "MPPT", "", Quality.GOOD, "t")
    event = Event("anomaly", "r1", power.path, T0, "warning", "raised", "m", {"x": 1})
    rows = [
        ("points", power.to_dict()),
        *[("texts", r) for r in TextPoints((mode,)).rows()],
        *_aggregate_rows([3]),
        ("events", event.to_dict()),
    ]
    with caplog.at_level(logging.INFO, "connectors.timescale.schema"):
        reports, step = _run(_cfg(endpoints, schema), tmp_path, rows)
    assert not [r for r in reports if isinstance(r, DeadLetter)]
    assert step.written == len(rows)
    # PostgreSQL alone: said once, at INFO (nothing is wrong), plain tables.
    assert (
        "using plain PostgreSQL tables: the timescaledb extension is not installed" in caplog.text
    )
    assert _db(endpoints, f'select * from "{schema}".tags order by path') == [
        (f"{CTX.path}/ac_power", "acme", "plant-1", "pv", "array-1", "inv-01", "ac_power", "kW"),
        (f"{CTX.path}/mode", "acme", "plant-1", "pv", "array-1", "inv-01", "mode", ""),
    ]
    # Grafana filters by level without parsing paths.
    site_rows = f'select tag, count from "{schema}".aggregates_isa95 where site = %s and area = %s'
    assert _db(endpoints, site_rows, "plant-1", "pv") == [("ac_power", 3)]
    assert _db(endpoints, f'select path, value from "{schema}".text_points') == [
        (f"{CTX.path}/mode", "MPPT")
    ]
    assert _db(endpoints, f'select machine, rule from "{schema}".events_isa95') == [
        ("inv-01", "r1")
    ]
    indexes = {
        r[0]
        for r in _db(endpoints, "select indexname from pg_indexes where schemaname = %s", schema)
    }
    assert {"points_path_time_idx", "aggregates_path_time_idx", "tags_site_idx"} <= indexes


def test_rows_the_database_refuses_become_dead_letters_and_the_others_are_written(
    endpoints, schema, tmp_path
):
    cfg = _cfg(endpoints, schema)
    _create(endpoints, cfg)
    _db(endpoints, f'alter table "{schema}".aggregates add constraint small check (count < 1000)')
    reports, step = _run(cfg, tmp_path, _aggregate_rows([3, 4, 5000, 6, 7, 8000, 9]))
    dead = [r for r in reports if isinstance(r, DeadLetter)]
    assert sorted(d.payload["count"] for d in dead) == [5000, 8000]
    assert all(d.reason.startswith("refused by the database (SQLSTATE 23514)") for d in dead)
    counts = _db(endpoints, f'select count from "{schema}".aggregates order by start_ts')
    assert [c for (c,) in counts] == [3, 4, 6, 7, 9]
    assert step.spool.pending() == 0


def test_a_server_limit_is_never_retried_forever(endpoints, schema, tmp_path):
    cfg = _cfg(endpoints, schema)
    _create(endpoints, cfg)
    _db(
        endpoints,
        f"""create function "{schema}".limit_hit() returns trigger language plpgsql as $$
        begin raise exception 'statement too complex' using errcode = '54001'; end $$;
        create trigger limit_hit before insert on "{schema}".events
        for each row execute function "{schema}".limit_hit()""",
    )
    events = [
        ("events", Event("alarm", "a", f"{CTX.path}/t", T0 + k, "major", "raised").to_dict())
        for k in range(4)
    ]
    reports, step = _run(cfg, tmp_path, events + _aggregate_rows([1, 2]))
    dead = [r for r in reports if isinstance(r, DeadLetter)]
    assert len(dead) == 4
    assert all("SQLSTATE 54001" in d.reason for d in dead)
    assert len(_db(endpoints, f'select 1 from "{schema}".aggregates')) == 2
    assert step.spool.pending() == 0


def test_a_decompression_limit_is_lifted_for_the_sinks_session_and_the_rows_written(
    endpoints, schema, tmp_path, caplog
):
    cfg = _cfg(endpoints, schema)
    _create(endpoints, cfg)
    # TimescaleDB's refusal of an upsert into compressed chunks, until the session lifts it.
    _db(
        endpoints,
        f"""create function "{schema}".decompress() returns trigger language plpgsql as $$
        begin
          if coalesce(current_setting(
               'timescaledb.max_tuples_decompressed_per_dml_transaction', true), '') <> '0' then
            raise exception 'tuple decompression limit exceeded by operation'
              using errcode = '53400';
          end if;
          return new;
        end $$;
        create trigger decompress before insert on "{schema}".aggregates
        for each row execute function "{schema}".decompress()""",
    )
    with caplog.at_level(logging.WARNING):
        reports, _ = _run(cfg, tmp_path, _aggregate_rows([1, 2, 3]))
    assert not [r for r in reports if isinstance(r, DeadLetter)]
    assert len(_db(endpoints, f'select 1 from "{schema}".aggregates')) == 3
    assert "lifted the decompression limit for its session" in caplog.text
