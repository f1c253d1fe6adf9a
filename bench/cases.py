"""Benchmark cases; each runs in its own process (``python -m bench.cases NAME ...``).

A case prints one JSON line: points, seconds, points/s, peak RSS (MB) and a checksum of its
results so that the suite can check that faster paths compute the same numbers.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.data import START_MS, BenchData
from operators.record import PointBatch
from operators.validate import RangeRule, ValidationRules, Validator
from operators.window import TumblingAggregator, WindowAggregates

ROOT = Path(__file__).resolve().parents[1]
RULES = ValidationRules(ranges=(RangeRule("*", -1e6, 1e6),), max_past_ms=None, max_future_ms=None)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _checksum(windows: list[WindowAggregates]) -> dict[str, float]:
    out: dict[str, float] = {}
    for w in windows:
        out[f"{w.label}_rows"] = out.get(f"{w.label}_rows", 0) + len(w)
        out[f"{w.label}_count"] = out.get(f"{w.label}_count", 0) + int(w.count.sum())
        out[f"{w.label}_sum"] = out.get(f"{w.label}_sum", 0.0) + float(w.sum.sum())
        out[f"{w.label}_max"] = max(out.get(f"{w.label}_max", -math.inf), float(w.max.max()))
    return out


def _valid_batches(data: BenchData) -> Iterator[PointBatch]:
    v = Validator(RULES)
    for b in data.batches():
        yield v.process(b).ok


# -- case 1: the operator chain in a Bytewax flow ---------------------------------------------
def chain(data: BenchData) -> dict[str, Any]:
    """validate -> 1m/15m aggregate -> anomaly rules -> alarms -> ONNX on 1m features."""
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.testing import TestingSink, TestingSource, run_main

    from flows.build import shard_key
    from operators.alarm import AlarmRule
    from operators.anomaly import AnomalyRule
    from operators.dataflow import aggregate, alarms, anomalies, score_windows, validate
    from operators.inference import ModelSpec, OnnxScorer, load_feature_specs

    meta = json.loads((ROOT / "models" / "inverter_models.json").read_text())
    specs = load_feature_specs(meta["features"])
    models = tuple(
        ModelSpec(
            m["name"],
            ROOT / "models" / m["file"],
            m["output"],
            m.get("column"),
            m.get("negate", False),
            m.get("threshold"),
        )
        for m in meta["models"]
    )
    flow = Dataflow("bench_chain")
    src = op.input("in", flow, TestingSource(data.batches()))
    keyed = op.key_on("key", src, shard_key)
    v = validate("validate", keyed, RULES)
    agg = aggregate("agg", v.oks, allowed_lateness_ms=5000, idle_close=False)
    an = anomalies(
        "anomaly",
        v.oks,
        (
            AnomalyRule("soc-drop", "drop", "soc", 300_000, 0.2),
            AnomalyRule("power-spike", "spike", "ac_power", 60_000, factor=2.0, min_baseline=1.0),
            AnomalyRule("eff-drop", "drop", "efficiency", 600_000, 0.15, ignore_below=50),
            AnomalyRule("v-dev", "deviation", "dc_voltage", 120_000, 0.1, nominal=620.0),
        ),
    )
    al = alarms("alarm", v.oks, (AlarmRule("over-temp", "temperature", 85.0, 5.0),))
    scored = score_windows(
        "onnx", agg.aggregates, lambda: OnnxScorer(60_000, "*/pv/*/inv-*", specs, models)
    )
    windows: list[WindowAggregates] = []
    events: list[Any] = []
    op.output("aggs", agg.aggregates, TestingSink(windows))
    op.output("events", op.merge("ev", an, al, scored.events), TestingSink(events))
    op.output("dead", v.errs, TestingSink([]))
    op.output("late", agg.late, TestingSink([]))
    op.output("scores", scored.kpis, TestingSink([]))
    t0 = time.perf_counter()
    run_main(flow)
    dt = time.perf_counter() - t0
    return {"seconds": dt, "checksum": _checksum(windows), "events": len(events)}


# -- references --------------------------------------------------------------------------------
def numpy_only(data: BenchData) -> dict[str, Any]:
    """The same validation and aggregates with numpy alone, no dataflow: the limit."""
    agg = TumblingAggregator(allowed_lateness_ms=5000, idle_close=False)
    windows: list[WindowAggregates] = []
    t0 = time.perf_counter()
    for b in _valid_batches(data):
        windows += agg.add(b, 0)[0]
    windows += agg.flush()
    return {"seconds": time.perf_counter() - t0, "checksum": _checksum(windows)}


def python_loop(data: BenchData) -> dict[str, Any]:
    """Per-point Python dicts: count/sum/min/max per tag and 1m/15m window."""
    expanded = [
        (b.tags, b.tag_idx.tolist(), b.ts_ms.tolist(), b.value.tolist()) for b in data.batches()
    ]
    t0 = time.perf_counter()
    state: dict[tuple[int, str, int], list[float]] = {}
    newest = -1
    closed = -1
    for _tags, idx, tss, vals in expanded:
        for i, ts, v in zip(idx, tss, vals, strict=True):
            if v != v or not -1e6 <= v <= 1e6 or ts < closed:
                continue
            newest = max(newest, ts)
            for w in (60_000, 900_000):
                k = (w, str(i), ts - ts % w)
                s = state.get(k)
                if s is None:
                    state[k] = [1, v, v, v]
                else:
                    s[0] += 1
                    s[1] += v
                    s[2] = min(s[2], v)
                    s[3] = max(s[3], v)
        closed = max(closed, (newest - 5000) // 60_000 * 60_000)
    return {"seconds": time.perf_counter() - t0, "windows": len(state)}


def fold_window_flow(data: BenchData) -> dict[str, Any]:
    """Plain Bytewax: per-point items, ``fold_window`` per tag at 1 min and 15 min."""
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.operators.windowing import EventClock, TumblingWindower, fold_window
    from bytewax.testing import TestingSink, TestingSource, run_main

    def points() -> Iterator[tuple[str, datetime, float]]:
        for b in data.batches():
            names = [t.path for t in b.tags]
            for i, ts, v in zip(
                b.tag_idx.tolist(), b.ts_ms.tolist(), b.value.tolist(), strict=True
            ):
                yield names[i], datetime.fromtimestamp(ts / 1000, UTC), v

    align = datetime.fromtimestamp(START_MS / 1000, UTC)
    flow = Dataflow("bench_fold")
    s = op.input("in", flow, TestingSource(points(), batch_size=1000))
    ok = op.filter("valid", s, lambda p: p[2] == p[2] and -1e6 <= p[2] <= 1e6)
    keyed = op.key_on("key", ok, lambda p: p[0])
    clock = EventClock(lambda p: p[1], wait_for_system_duration=timedelta(seconds=5))
    out = []
    for minutes in (1, 15):
        win = TumblingWindower(length=timedelta(minutes=minutes), align_to=align)
        folded = fold_window(
            f"fold{minutes}",
            keyed,
            clock,
            win,
            lambda: [0, 0.0, math.inf, -math.inf],
            lambda a, p: [a[0] + 1, a[1] + p[2], min(a[2], p[2]), max(a[3], p[2])],
            lambda a, b: [a[0] + b[0], a[1] + b[1], min(a[2], b[2]), max(a[3], b[3])],
        )
        op.output(f"out{minutes}", folded.down, TestingSink(out))
    t0 = time.perf_counter()
    run_main(flow)
    return {"seconds": time.perf_counter() - t0, "windows": len(out)}


CASES = {
    "chain": chain,
    "numpy": numpy_only,
    "python": python_loop,
    "fold_window": fold_window_flow,
}


def main() -> None:
    """Run one case and print its JSON line."""
    p = argparse.ArgumentParser()
    p.add_argument("case", choices=sorted(CASES))
    p.add_argument("--tags", type=int, required=True)
    p.add_argument("--hz", type=float, required=True)
    p.add_argument("--seconds", type=float, required=True)
    a = p.parse_args()
    data = BenchData(n_tags=a.tags, rate_hz=a.hz, duration_s=a.seconds)
    res = CASES[a.case](data)
    res.update(
        case=a.case,
        tags=len(data.tags),
        hz=a.hz,
        points=data.total_points,
        points_per_s=data.total_points / res["seconds"],
        peak_rss_mb=_peak_rss_mb(),
    )
    json.dump(res, sys.stdout)
    print()


if __name__ == "__main__":
    main()
