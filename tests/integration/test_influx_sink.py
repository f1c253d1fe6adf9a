"""Aggregates and KPIs into a real InfluxDB 1.x; a field-type conflict becomes a dead letter."""

from __future__ import annotations

import urllib.parse
import uuid
from pathlib import Path

import pytest
from bytewax.testing import run_main

from flows.build import build_flow
from flows.config import DEMO_SITE, parse_site
from tests.conftest import require_port
from tests.integration.test_edge_flow import demo_config, read_jsonl

pytestmark = pytest.mark.integration


def test_flow_writes_influx_and_dead_letters_type_conflicts(endpoints, tmp_path: Path):
    u = urllib.parse.urlparse(endpoints.influx_url)
    require_port(u.hostname or "127.0.0.1", u.port or 8086, "InfluxDB")
    db = f"t_{uuid.uuid4().hex[:8]}"
    endpoints.influx("/query", q=f'CREATE DATABASE "{db}"')
    endpoints.influx("/query", q=f'GRANT ALL ON "{db}" TO edgeflow')
    # Poison the shard: in its time range the KPI field "value" already is an integer.
    endpoints.influx(
        "/write",
        db=db,
        precision="ms",
        data=b"kpis,enterprise=acme,name=power_factor,site=demo-solar value=1i 1780308000000",
    )

    cfg = demo_config(
        tmp_path, speed=0, start="2026-06-01T10:00:00Z", duration_s=900, ticks_per_batch=30
    )
    cfg["sinks"] = [
        {
            "type": "influxdb",
            "url": endpoints.influx_url,
            "database": db,
            "username": "edgeflow",
            "password": "edgeflow",
            "streams": ["aggregates", "kpis", "events"],
        },
        {"type": "file", "dir": str(tmp_path), "streams": ["aggregates", "kpis", "dead_letters"]},
    ]
    run_main(build_flow(parse_site(cfg, base_dir=DEMO_SITE.parent)))

    res = endpoints.influx("/query", db=db, q='SELECT count("count") FROM "aggregates_1m"')
    assert res["results"][0]["series"][0]["values"][0][1] == 15 * 29
    res = endpoints.influx(
        "/query",
        db=db,
        q='SELECT "mean" FROM "aggregates_15m" WHERE "tag" = \'ac_power\' '
        "AND \"machine\" = 'inv-01'",
    )
    ((_time, mean),) = res["results"][0]["series"][0]["values"]
    want = next(
        r
        for r in read_jsonl(tmp_path / "aggregates.jsonl")
        if r["window"] == "15m" and r["path"].endswith("inv-01/ac_power")
    )
    assert mean == pytest.approx(want["mean"], rel=1e-12)

    dead = [d for d in read_jsonl(tmp_path / "dead_letters.jsonl") if d["stage"] == "influxdb"]
    kpis = read_jsonl(tmp_path / "kpis.jsonl")
    # Field types are per measurement and shard: every float KPI line in it conflicts, each
    # comes back once with InfluxDB's reason, and nothing else is lost.
    assert len(dead) == len(kpis) > 0
    assert all("field type conflict" in d["reason"] for d in dead)
    assert all(d["payload"]["line"].startswith("kpis,") for d in dead)
    endpoints.influx("/query", q=f'DROP DATABASE "{db}"')
