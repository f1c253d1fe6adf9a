"""Case 7: long histories of few tags, end to end on one worker, beside the raw read rate.

``python -m bench.history [--quick]`` prints one JSON line with, per case, points/s of the
chain (file or topic -> validate -> 1 min / 15 min aggregates -> anomaly rules -> alarms) next
to the raw read rate of the same file (pyarrow alone) or topic (confluent-kafka alone), and the
peak RSS of a full ``edgeflow backtest`` with its HTML report over the longest history.

- ``month_csv_1m``: a month of 6 tags at 1 minute, wide CSV, 1 min / 15 min windows (one
  sample per tag and window); ``month_csv``: the same in hourly windows + daily rollup (median
  of 7 interleaved runs each, every run printed);
- ``day_parquet``: a day of 100 tags at 1 Hz (8.64M points), wide Parquet;
- ``day_kafka``: the same day loaded with ``edgeflow load`` into a 1-partition topic;
- ``report`` / ``report_3d``: ``edgeflow backtest`` with its report over the Parquet day and
  over three days (peak RSS in a process of its own: it must not grow with the history).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from bench.cases import ALARM_RULES, RULES, _CountingSink
from wire.records import to_ms

START = "2026-01-01T00:00:00Z"
MONTH_REPEATS = 7
ROOT = Path(__file__).resolve().parents[1]


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_wide(path: Path, *, tags: int, interval_s: float, seconds: float) -> int:
    """Write a wide history (time + one column per tag); return the number of points."""
    rng = np.random.default_rng(5)
    n = int(seconds / interval_s)
    t = to_ms(START) + (np.arange(n) * interval_s * 1000).astype(np.int64)
    cols: dict[str, Any] = {"time": pa.array(t, pa.timestamp("ms", "UTC"))}
    phase = np.arange(n) / max(1, n) * 2 * np.pi * (seconds / 86_400)
    for j in range(tags):
        name = ["ac_power", "temperature", "soc", "dc_voltage", "efficiency", "irradiance"][j % 6]
        values = 50 + 30 * np.sin(phase + j) + rng.normal(0, 1, n)
        cols[f"pv/array-1/inv-{j // 6 + 1:02d}/{name} [kW]"] = pa.array(values)
    table = pa.table(cols)
    if path.suffix == ".parquet":
        pq.write_table(table, path, row_group_size=16_384)
    else:
        pacsv.write_csv(table, path)
    return n * tags


def raw_read(path: Path) -> float:
    """Seconds to read the file with pyarrow alone (all columns to numpy)."""
    t0 = time.perf_counter()
    table = pq.read_table(path) if path.suffix == ".parquet" else pacsv.read_csv(path)
    for c in table.columns:
        c.to_numpy()
    return time.perf_counter() - t0


def chain_from(source: Any, window_ms: int = 60_000, rollup_ms: int = 900_000) -> float:
    """Seconds for the chain from ``source`` (counting sinks: nothing kept, no rows built)."""
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.testing import run_main

    from flows.build import key_by_shard
    from operators.aggregate.flow import aggregate
    from operators.alarm.flow import alarms
    from operators.alarm.logic import AlarmRule
    from operators.anomaly.flow import anomalies
    from operators.anomaly.logic import AnomalyRule
    from operators.validate.flow import coalesce, validate
    from wire.records import PointBatch

    flow = Dataflow("bench_history")
    items = op.input("in", flow, source)
    batches = op.filter("points", items, lambda x: isinstance(x, PointBatch))
    v = validate("validate", key_by_shard("key", batches), RULES)
    oks = coalesce("coalesce", v.oks, max_points=50_000, max_delay_ms=100)
    agg = aggregate(
        "agg",
        oks,
        window_ms=window_ms,
        rollup_ms=(rollup_ms,),
        allowed_lateness_ms=5000,
        idle_close=False,
    )
    rules = (
        AnomalyRule(id="drop", kind="drop", tags="soc", lookback_ms=300_000, threshold=0.2),
        AnomalyRule(
            id="spike",
            kind="spike",
            tags="ac_power",
            lookback_ms=600_000,
            factor=2.0,
            min_baseline=1.0,
        ),
    )
    an = anomalies("anomaly", oks, rules)
    al = alarms("alarm", oks, tuple(AlarmRule(**r) for r in ALARM_RULES))
    counts = {"aggs": 0, "events": 0, "late": 0, "dead": 0}
    op.output("aggs", agg.aggregates, _CountingSink(counts, "aggs"))
    op.output("events", op.merge("ev", an, al), _CountingSink(counts, "events"))
    op.output("late", agg.late, _CountingSink(counts, "late"))
    op.output("dead", v.errs, _CountingSink(counts, "dead"))
    t0 = time.perf_counter()
    run_main(flow)
    return time.perf_counter() - t0


def file_case(
    path: Path, points: int, window_ms: int = 60_000, rollup_ms: int = 900_000
) -> dict[str, Any]:
    from connectors.files.config import FileInput
    from connectors.files.source import FileSource

    cfg = FileInput(type="file", path=str(path))
    raw = raw_read(path)
    dt = chain_from(FileSource(cfg, ("acme", "bench")), window_ms, rollup_ms)
    return {"points": points, "per_s": points / dt, "raw_per_s": points / raw}


def kafka_case(path: Path, points: int) -> dict[str, Any]:
    from confluent_kafka import Consumer, TopicPartition

    from connectors.files.config import FileInput
    from connectors.kafka.config import KafkaInput
    from connectors.kafka.load import load
    from connectors.kafka.source import KafkaPointsSource

    bootstrap = os.environ.get("EDGEFLOW_KAFKA_BOOTSTRAP", "127.0.0.1:19092")
    topic = f"bench.history.{uuid.uuid4().hex[:8]}"
    loaded = load(
        FileInput(type="file", path=str(path)),
        ("acme", "bench"),
        bootstrap=bootstrap,
        topic=topic,
        message_span_s=60,
    )
    c = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "bench", "enable.partition.eof": True}
    )
    c.assign([TopicPartition(topic, 0, 0)])
    t0 = time.perf_counter()
    got = 0
    while got < loaded["messages"]:
        got += sum(1 for m in c.consume(5000, timeout=1) if m.error() is None)
    raw = time.perf_counter() - t0
    c.close()
    cfg = KafkaInput(
        type="kafka", kafka={"bootstrap_servers": bootstrap}, topic=topic, bounded=True
    )
    dt = chain_from(KafkaPointsSource(cfg))
    return {
        "points": points,
        "per_s": points / dt,
        "raw_per_s": points / raw,
        "load_per_s": points / loaded["seconds"],
        "messages": loaded["messages"],
    }


def report_case(path: Path) -> dict[str, Any]:
    """Peak RSS of ``edgeflow backtest`` (report included) in a process of its own."""
    with tempfile.TemporaryDirectory() as out:
        code = (
            "import json\n"
            "from pathlib import Path\n"
            "from flows.config import load_site\n"
            "from flows.backtest import backtest\n"
            f"r = backtest(load_site({str(ROOT / 'flows/sites/backtest.yaml')!r}), "
            f"file=Path({str(path)!r}), out=Path({out!r}))\n"
            # VmHWM, not ru_maxrss: a child inherits its parent's ru_maxrss across exec.
            "hwm = next(int(x.split()[1]) for x in open('/proc/self/status') "
            "if x.startswith('VmHWM'))\n"
            "print(json.dumps({'points': r['points_read'], 'rss_mb': hwm / 1024}))\n"
        )
        t0 = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=ROOT
        )
        dt = time.perf_counter() - t0
    r: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return {**r, "seconds": dt, "per_s": r["points"] / dt}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    a = p.parse_args()
    scale = 0.1 if a.quick else 1.0
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        month = Path(tmp) / "month.csv"
        n = write_wide(month, tags=6, interval_s=60, seconds=30 * 86_400 * scale)
        # A month of 1-minute samples in the demo chain's 1 min / 15 min windows (one sample
        # per tag and window: the per-window cost shows), and in hourly windows with a daily
        # rollup (the yield-report view). A month takes a quarter of a second and single runs
        # on a shared machine vary by a third: the median of interleaved runs is printed.
        runs: dict[str, list[dict[str, Any]]] = {"month_csv_1m": [], "month_csv": []}
        for _ in range(MONTH_REPEATS):
            runs["month_csv_1m"].append(file_case(month, n))
            runs["month_csv"].append(file_case(month, n, 3_600_000, 86_400_000))
        for key, got in runs.items():
            rates = sorted(x["per_s"] for x in got)
            out[key] = {
                "points": n,
                "per_s": statistics.median(rates),
                "raw_per_s": statistics.median(x["raw_per_s"] for x in got),
                "runs": [x["per_s"] for x in got],
            }
        day = Path(tmp) / "day.parquet"
        n = write_wide(day, tags=100, interval_s=1, seconds=86_400 * scale)
        out["day_parquet"] = file_case(day, n)
        if "--no-kafka" not in sys.argv:
            try:
                out["day_kafka"] = kafka_case(day, n)
            except Exception as e:  # Kafka down: say so, the file cases stand
                out["day_kafka"] = {"skipped": str(e)[:200]}
        out["report"] = {**report_case(day), "days": scale}
        day3 = Path(tmp) / "day3.parquet"
        write_wide(day3, tags=100, interval_s=1, seconds=3 * 86_400 * scale)
        out["report_3d"] = {**report_case(day3), "days": 3 * scale}
    out["peak_rss_mb"] = _rss_mb()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
