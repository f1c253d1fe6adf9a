"""The plant dashboard's SQL runs against the schema the sink creates, in real PostgreSQL.

Every panel query and template variable of ``infra/grafana/dashboards/plant.json`` is run
after Grafana's macros are substituted as Grafana's PostgreSQL data source does, against a
schema the sink created and filled, so a schema change cannot silently break a panel.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from connectors.timescale.config import TimescaleSinkConfig
from connectors.timescale.sink import spooled
from tests.conftest import require_port
from wire.records import Event, Isa95, Point, Quality, TextPoints, now_ms

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
PLANT = ROOT / "infra" / "grafana" / "dashboards" / "plant.json"
FROM, TO = "now() - interval '1 day'", "now() + interval '1 hour'"


def grafana_sql(sql: str, schema: str, variables: dict[str, list[str]]) -> str:
    """Substitute the macros and variables the dashboard uses, as Grafana would."""
    sql = sql.replace("edgeflow.", f'"{schema}".')
    sql = re.sub(r"\$__timeFilter\((\w+)\)", rf"\1 BETWEEN {FROM} AND {TO}", sql)
    sql = re.sub(
        r"\$__timeGroupAlias\((\w+), '(\d+)m'\)",
        lambda m: (
            f"to_timestamp(floor(extract(epoch from {m.group(1)}) / "
            f"{int(m.group(2)) * 60}) * {int(m.group(2)) * 60}) AS time"
        ),
        sql,
    )
    for name, values in variables.items():
        sql = sql.replace(f"${name}", ", ".join(f"'{v}'" for v in values))
    assert "$" not in sql, f"a macro or variable is not substituted: {sql}"
    return sql


@pytest.fixture
def filled(endpoints, tmp_path) -> Iterator[str]:
    info = psycopg.conninfo.conninfo_to_dict(endpoints.pg_dsn)
    require_port(info.get("host", "127.0.0.1"), int(info.get("port", 5432)), "PostgreSQL")
    schema = f"dash_{uuid.uuid4().hex[:8]}"
    cfg = TimescaleSinkConfig.model_validate(
        {
            "type": "timescaledb",
            "dsn": endpoints.pg_dsn,
            "schema": schema,
            "streams": ["points", "aggregates", "events", "kpis", "texts"],
        }
    )
    ctx = Isa95("acme", "plant-1", "pv", "array-1", "inv-01")
    t = now_ms() // 900_000 * 900_000 - 900_000
    stats = dict.fromkeys(("min", "max", "mean", "sum", "first", "last", "twa"), 40.0)
    rows = [
        ("points", Point(t, ctx, "ac_power", 40.0, "kW", Quality.GOOD, "t").to_dict()),
        *[("texts", r) for r in TextPoints((Point(t, ctx, "mode", "MPPT"),)).rows()],
        *[
            (
                "aggregates",
                {
                    "path": f"{ctx.path}/ac_power",
                    "window_ms": w,
                    "start_ms": t,
                    "unit": "kW",
                    "count": 60,
                    **stats,
                    "std": 0.0,
                    "energy": 40.0 * w / 3_600_000,
                    "energy_unit": "kWh",
                    "closed_by": "watermark",
                },
            )
            for w in (60_000, 900_000)
        ],
        (
            "events",
            Event("alarm", "hot", f"{ctx.path}/temperature", t, "major", "raised").to_dict(),
        ),
        (
            "kpis",
            {
                "path": "acme/plant-1",
                "name": "performance_ratio",
                "window_ms": 900_000,
                "start_ms": t,
                "value": 0.81,
                "unit": "",
                "details": {},
            },
        ),
    ]
    step = spooled(cfg, tmp_path / "spool")
    step.on_batch(rows)
    step.on_eof()
    assert step.written == len(rows)
    yield schema
    with psycopg.connect(endpoints.pg_dsn, autocommit=True) as conn:
        conn.execute(f'drop schema if exists "{schema}" cascade')


def test_every_plant_dashboard_query_runs_on_the_sinks_schema(endpoints, filled):
    dash = json.loads(PLANT.read_text())
    variables = {"site": ["plant-1"], "area": ["pv"]}
    with psycopg.connect(endpoints.pg_dsn, autocommit=True) as conn:
        for var in dash["templating"]["list"]:
            got = conn.execute(grafana_sql(var["query"], filled, variables)).fetchall()
            assert got == [(variables[var["name"]][0],)], var["name"]
        for panel in dash["panels"]:
            for target in panel["targets"]:
                sql = grafana_sql(target["rawSql"], filled, variables)
                rows = conn.execute(sql).fetchall()
                # Every panel shows the row written for it.
                assert rows, f"panel {panel['title']!r} shows nothing: {sql}"
