"""The edge flow end to end on the embedded simulator: no external services needed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml
from bytewax.testing import run_main

from flows import lifecycle
from flows.build import build_flow
from flows.config import DEMO_SITE, parse_site
from simulators.site import EnergySite, Fault, SiteLayout
from tests.reference import assert_rows_match, reference_aggregates
from wire.records import to_ms

ROOT = Path(__file__).resolve().parents[2]
START = "2026-01-01T11:50:00Z"


def demo_config(out: Path, **sim_overrides) -> dict:
    data = yaml.safe_load(DEMO_SITE.read_text())
    for step in data["operators"]:
        for model in step.get("models", []):
            model["path"] = str((DEMO_SITE.parent / model["path"]).resolve())
    # These tests count the energy site's 29 tags: the demo's production line stays off.
    sim = data["inputs"][0]
    sim["faults"] = [f for f in sim["faults"] if f["asset"] != "press-01"]
    sim.update({"production_line": False, **sim_overrides})
    data["sinks"] = [
        {
            "type": "file",
            "dir": str(out),
            "streams": ["raw", "aggregates", "events", "late", "dead_letters"],
        }
    ]
    return data


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    text = path.read_text()
    # A writer may be mid-line; only complete lines count.
    return [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines() if line]


def simulated_points(cfg: dict) -> list[tuple[str, str, int, float]]:
    """Regenerate the site's points independently of the flow."""
    inp = cfg["inputs"][0]
    sim = EnergySite(
        layout=SiteLayout(enterprise=cfg["site"]["enterprise"], site=cfg["site"]["site"]),
        start_ms=to_ms(inp["start"]),
        interval_ms=inp["interval_ms"],
        seed=inp["seed"],
        faults=tuple(Fault(**f) for f in inp["faults"]),
    )
    ticks = int(inp["duration_s"] * 1000 // inp["interval_ms"])
    return [(p.path, p.unit, p.ts_ms, p.value) for p in sim.step(ticks).to_points()]


def test_demo_flow_aggregates_match_independent_computation(tmp_path: Path):
    cfg = demo_config(tmp_path, speed=0, start=START, duration_s=1800, ticks_per_batch=45)
    # A stuck meter makes the demo's stale rule fire; a BAD-quality burst feeds dead letters.
    cfg["inputs"][0]["faults"] += [
        {"kind": "stuck_sensor", "asset": "meter-01", "start_s": 600, "duration_s": 300},
        {"kind": "bad_quality", "asset": "bess-01", "start_s": 1000, "duration_s": 20},
    ]
    run_main(build_flow(parse_site(cfg, base_dir=DEMO_SITE.parent)))

    points = simulated_points(cfg)
    raw = read_jsonl(tmp_path / "raw.jsonl")
    assert len(raw) == len(points) == 1800 * 29
    dead = read_jsonl(tmp_path / "dead_letters.jsonl")
    assert len(dead) == 20 * 4  # bess-01 has 4 tags
    assert {d["reason"].split(":")[0] for d in dead} == {"quality"}
    rejected = {(d["payload"]["path"], d["payload"]["ts_ms"]) for d in dead}
    accepted = [p for p in points if (p[0], p[2]) not in rejected]

    aggs = read_jsonl(tmp_path / "aggregates.jsonl")
    one = [r for r in aggs if r["window"] == "1m"]
    fifteen = [r for r in aggs if r["window"] == "15m"]
    assert len(one) == 30 * 29
    assert len(fifteen) == 3 * 29  # 11:45 (partial), 12:00, 12:15 (partial)
    assert_rows_match(one, reference_aggregates(accepted, 60_000))
    assert_rows_match(fifteen, reference_aggregates(accepted, 900_000))
    assert read_jsonl(tmp_path / "late.jsonl") == []

    events = read_jsonl(tmp_path / "events.jsonl")
    stale = {e["path"].rsplit("/", 1)[1] for e in events if e["kind"] == "stale"}
    assert stale == {"active_power", "voltage", "frequency", "power_factor"}


def test_late_points_leave_on_the_late_stream_with_a_reason():
    """Old data re-delivered after its window closed is reported, not aggregated or lost."""
    from bytewax import operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.testing import TestingSink, TestingSource

    from flows.build import key_by_shard
    from operators.aggregate.flow import aggregate, late_dead_letters

    sim = EnergySite(layout=SiteLayout(), start_ms=to_ms(START), seed=42)
    first = sim.step(150)  # 2.5 minutes
    later = sim.step(60)
    flow = Dataflow("late")
    batches = op.input(
        "in", flow, TestingSource([first, later, first.select(first.ts_ms < to_ms(START) + 2000)])
    )
    out = aggregate("agg", key_by_shard("k", batches), allowed_lateness_ms=0, idle_close=False)
    aggs: list = []
    late: list = []
    op.output("aggs", out.aggregates, TestingSink(aggs))
    op.output(
        "late",
        op.flat_map("dl", out.late, lambda b: late_dead_letters(b, stage="agg", window_ms=60_000)),
        TestingSink(late),
    )
    run_main(flow)
    assert len(late) == 2 * 29
    assert all(d.reason.startswith("late: 1m window starting") for d in late)
    windows = [one for w in aggs for one in w.windows()]
    first_minute = next(w for w in windows if w.window_ms == 60_000 and w.start_ms == to_ms(START))
    assert first_minute.count.tolist() == [60] * 29  # the re-delivered copies were not added


def test_cli_runs_and_stops_cleanly_on_ctrl_c(tmp_path: Path):
    cfg = demo_config(tmp_path / "out", speed=600, start=START)
    cfg["inputs"][0].pop("duration_s", None)
    cfg["sinks"].append({"type": "console"})
    site_file = tmp_path / "site.yaml"
    site_file.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "EDGEFLOW_SITE": str(site_file), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "bytewax.run", "flows.edge"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    agg_file = tmp_path / "out" / "aggregates.jsonl"
    while (
        time.monotonic() < deadline and proc.poll() is None and len(read_jsonl(agg_file)) < 29 * 3
    ):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]
    assert "Traceback" not in err
    assert "stop requested" in err
    assert "[1m window" in out

    rows = read_jsonl(agg_file)
    raw = read_jsonl(tmp_path / "out" / "raw.jsonl")
    points = [(r["path"], r["unit"], r["ts_ms"], r["value"]) for r in raw]
    ref = reference_aggregates(points, 60_000)
    closed = [r for r in rows if r["window"] == "1m" and r["closed_by"] == "watermark"]
    assert len(closed) >= 29 * 3
    assert_rows_match(closed, {k: ref[k] for k in ((r["path"], r["start_ms"]) for r in closed)})
    lifecycle.reset()
