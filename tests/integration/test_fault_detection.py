"""The demo site's operator chain finds every injected fault and stays quiet on normal data."""

from __future__ import annotations

from pathlib import Path

from bytewax.testing import run_main

from flows.build import build_flow
from flows.config import DEMO_SITE, parse_site
from tests.integration.test_edge_flow import demo_config, read_jsonl


def run_demo(tmp_path: Path, **sim) -> list[dict]:
    cfg = demo_config(tmp_path, speed=0, seed=11, **sim)
    cfg["sinks"][0]["streams"] = ["events", "kpis", "dead_letters", "late"]
    run_main(build_flow(parse_site(cfg, base_dir=DEMO_SITE.parent)))
    assert read_jsonl(tmp_path / "dead_letters.jsonl") == []
    assert read_jsonl(tmp_path / "late.jsonl") == []
    return read_jsonl(tmp_path / "events.jsonl")


def test_a_normal_day_raises_nothing(tmp_path: Path):
    events = run_demo(
        tmp_path,
        start="2026-06-01T00:00:00Z",
        duration_s=86_400,
        interval_ms=5000,
        ticks_per_batch=720,
        faults=[],
    )
    assert events == []
    kpis = read_jsonl(tmp_path / "kpis.jsonl")
    scores = [k for k in kpis if k["name"] == "fault_probability"]
    assert len(scores) == 1440 * 2
    assert max(k["value"] for k in scores) < 0.5


def test_each_injected_fault_is_detected(tmp_path: Path):
    events = run_demo(tmp_path, start="2026-06-01T11:50:00Z", duration_s=2400, ticks_per_batch=60)
    start_ms = 1780314600000
    raised = {
        (e["kind"], e["rule"], e["path"].split("/")[4]): (e["ts_ms"] - start_ms) / 1000
        for e in events
        if e["state"] == "raised"
    }
    expected = {
        ("alarm", "inverter-over-temperature", "inv-01"): (300, 480),
        ("anomaly", "power-spike", "panel-01"): (480, 510),
        ("anomaly", "voltage-deviation", "meter-01"): (600, 840),
        ("anomaly", "soc-drop", "bess-01"): (900, 1140),
        ("anomaly", "efficiency-drop", "inv-02"): (1200, 1800),
        ("kpi", "string_imbalance", "inv-01"): (1500, 2100),
        ("score", "fault_probability", "inv-02"): (1200, 1860),
    }
    for key, (lo, hi) in expected.items():
        assert key in raised, f"{key} not detected; got {sorted(raised)}"
        assert lo <= raised[key] <= hi + 60, (key, raised[key])
    # The classifier flags inv-01 for both of its faults (over-temperature, string fault).
    inv1 = [
        (e["ts_ms"] - start_ms) / 1000
        for e in events
        if e["rule"] == "fault_probability" and e["state"] == "raised" and "inv-01" in e["path"]
    ]
    assert any(300 <= t <= 540 for t in inv1) and any(1500 <= t <= 2160 for t in inv1), inv1
    # Nothing fires on assets that had no fault.
    assert not [e for e in events if "inv-02" in e["path"] and e["ts_ms"] - start_ms < 1200_000]
    # Every raised condition that ended before the run's end was cleared again.
    for e in events:
        if e["state"] == "raised" and e["kind"] != "kpi":
            assert any(
                c["state"] == "cleared"
                and c["rule"] == e["rule"]
                and c["path"] == e["path"]
                and c["ts_ms"] > e["ts_ms"]
                for c in events
            ), e
