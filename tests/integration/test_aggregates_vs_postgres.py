"""1m/15m aggregates equal SQL over the same raw points in PostgreSQL (an independent oracle).

A four-hour simulated stream with 2% of points delayed up to 90 s (out of order, and late for
a 5 s allowed lateness) runs through the demo chain. PostgreSQL then computes every window
from the accepted raw points with plain SQL; the flow's rows must match it exactly.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import psycopg
import pytest
from bytewax.testing import run_main

from flows.build import build_flow
from flows.config import DEMO_SITE, parse_site
from tests.conftest import require_port
from tests.integration.test_edge_flow import demo_config, read_jsonl

pytestmark = pytest.mark.integration

# Energy and the time-weighted mean integrate the line through each tag's points (in time
# order) wherever consecutive points are at most max_gap apart, split at window bounds.
SQL = """
with s as (
    select path, ts_ms as t1, value as v1,
           lag(ts_ms) over w as t0, lag(value) over w as v0
    from raw window w as (partition by path order by ts_ms, seq)
), seg as (
    select path, t0, v0, t1, v1, t1 - t1 %% %(w)s as b,
           v0 + (v1 - v0) * ((t1 - t1 %% %(w)s) - t0)::float8 / (t1 - t0) as vb
    from s where t0 is not null and t1 > t0 and t1 - t0 <= %(gap)s
), parts as (
    select path, b as start_ms,
           case when t0 < b then (vb + v1) / 2 * (t1 - b) else (v0 + v1) / 2 * (t1 - t0) end
             as area,
           case when t0 < b then t1 - b else t1 - t0 end as covered
    from seg
    union all
    select path, b - %(w)s, (v0 + vb) / 2 * (b - t0), b - t0 from seg where t0 < b
), integ as (
    select path, start_ms, sum(area) as area, sum(covered)::bigint as covered
    from parts group by path, start_ms
), p as (
    select path, unit, ts_ms, value, seq, ts_ms - ts_ms %% %(w)s as start_ms from raw
)
select p.path, p.start_ms, min(unit), count(*), min(value), max(value), avg(value),
       stddev_pop(value), sum(value),
       (array_agg(value order by ts_ms, seq))[1],
       (array_agg(value order by ts_ms desc, seq desc))[1],
       coalesce(min(integ.area), 0), coalesce(min(integ.covered), 0)
from p left join integ using (path, start_ms)
group by p.path, p.start_ms
"""
POWER = {"W", "kW", "MW", "VA", "kVA"}


def sql_windows(conn: psycopg.Connection, window_ms: int) -> dict:
    out = {}
    for row in conn.execute(SQL, {"w": window_ms, "gap": 60_000}):
        path, start, unit, n, mn, mx, mean, std, total, first, last, integral, span = row
        out[(path, start)] = {
            "count": n,
            "min": mn,
            "max": mx,
            "mean": mean,
            "std": std,
            "sum": total,
            "first": first,
            "last": last,
            "twa": integral / span if span else mean,
            "energy": integral / 3_600_000 if unit in POWER else None,
        }
    return out


def test_aggregates_equal_sql_over_the_same_points(tmp_path: Path, endpoints):
    info = psycopg.conninfo.conninfo_to_dict(endpoints.pg_dsn)
    require_port(info.get("host", "127.0.0.1"), int(info.get("port", 5432)), "PostgreSQL")
    cfg = demo_config(
        tmp_path,
        speed=0,
        start="2026-06-01T09:00:00Z",
        duration_s=4 * 3600,
        ticks_per_batch=20,
        disorder_fraction=0.02,
        disorder_max_delay_ms=90_000,
    )
    agg_step = next(o for o in cfg["operators"] if o["type"] == "aggregate")
    agg_step["idle_close"] = False  # pure event time: deterministic
    run_main(build_flow(parse_site(cfg, base_dir=DEMO_SITE.parent)))

    raw = read_jsonl(tmp_path / "raw.jsonl")
    late = read_jsonl(tmp_path / "late.jsonl")
    dead = read_jsonl(tmp_path / "dead_letters.jsonl")
    assert len(raw) == 4 * 3600 * 29
    assert 0 < len(late) < len(raw) * 0.02, "the stream should have some late points"
    assert all(d["reason"].startswith("late: 1m window") for d in late)
    excluded = {(d["payload"]["path"], d["payload"]["ts_ms"]) for d in late + dead}
    accepted = [
        (r["path"], r["unit"], r["ts_ms"], r["value"], seq)
        for seq, r in enumerate(raw)
        if (r["path"], r["ts_ms"]) not in excluded
    ]
    arrival = [r["ts_ms"] for r in raw]
    assert any(b < a for a, b in itertools.pairwise(arrival)), "the stream should be out of order"

    rows = read_jsonl(tmp_path / "aggregates.jsonl")
    with psycopg.connect(endpoints.pg_dsn) as conn:
        conn.execute(
            "create temporary table raw (path text, unit text, ts_ms bigint, "
            "value double precision, seq bigint)"
        )
        with conn.cursor().copy("copy raw from stdin") as cp:
            for rec in accepted:
                cp.write_row(rec)
        for window, window_ms, n_windows in (("1m", 60_000, 240), ("15m", 900_000, 16)):
            want = sql_windows(conn, window_ms)
            got = {(r["path"], r["start_ms"]): r for r in rows if r["window"] == window}
            assert len(got) == len(want) == n_windows * 29
            assert got.keys() == want.keys()
            for key, expected in want.items():
                for stat, value in expected.items():
                    actual = got[key][stat]
                    if value is None:
                        assert actual is None, (key, stat)
                    else:
                        assert math.isclose(actual, value, rel_tol=1e-9, abs_tol=1e-7), (
                            window,
                            key,
                            stat,
                            actual,
                            value,
                        )
