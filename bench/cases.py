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

import numpy as np
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from bench.data import START_MS, BenchData
from operators.aggregate.logic import TumblingAggregator
from operators.validate.config import RangeRule, ValidateOp
from operators.validate.logic import Validator
from wire.records import PointBatch, WindowAggregates

ROOT = Path(__file__).resolve().parents[1]
RULES = ValidateOp(
    type="validate", ranges=(RangeRule("*", -1e6, 1e6),), max_past_ms=None, max_future_ms=None
)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _checksum(windows: list[WindowAggregates]) -> dict[str, float]:
    """Row and point counts, sums and maxima of the final revision of every window.

    A window closed early and re-emitted later (``revision + 1``) is counted once, as its
    last revision: when that happens depends on batching, the final rows do not.
    """
    finals: dict[tuple[int, int], WindowAggregates] = {}
    for w in windows:
        key = (w.window_ms, w.start_ms)
        if key not in finals or w.revision >= finals[key].revision:
            finals[key] = w
    out: dict[str, float] = {}
    for _, w in sorted(finals.items(), key=lambda kv: kv[0]):
        out[f"{w.label}_rows"] = out.get(f"{w.label}_rows", 0) + len(w)
        out[f"{w.label}_count"] = out.get(f"{w.label}_count", 0) + int(w.count.sum())
        out[f"{w.label}_sum"] = out.get(f"{w.label}_sum", 0.0) + float(w.sum.sum())
        out[f"{w.label}_max"] = max(out.get(f"{w.label}_max", -math.inf), float(w.max.max()))
    return out


def _valid_batches(data: BenchData) -> Iterator[PointBatch]:
    v = Validator(RULES)
    for b in data.batches():
        yield v.process(b).ok


class _CountingPart(StatelessSinkPartition[Any]):
    def __init__(self, counts: dict[str, int], name: str) -> None:
        self.counts, self.name = counts, name

    def write_batch(self, items: list[Any]) -> None:
        self.counts[self.name] += len(items)


class _CountingSink(DynamicSink[Any]):
    """A Bytewax sink that counts items (under ``name``) and keeps none."""

    def __init__(self, counts: dict[str, int], name: str) -> None:
        self.counts, self.name = counts, name

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _CountingPart:
        return _CountingPart(self.counts, self.name)


# The chain of cases 1 and 2: the demo site's rules on the bench tags, and the shipped models.
ANOMALY_RULES: list[dict[str, Any]] = [
    {"id": "soc-drop", "kind": "drop", "tags": "soc", "lookback_ms": 300_000, "threshold": 0.2},
    {
        "id": "power-spike",
        "kind": "spike",
        "tags": "ac_power",
        "lookback_ms": 60_000,
        "factor": 2.0,
        "min_baseline": 1.0,
    },
    {
        "id": "eff-drop",
        "kind": "drop",
        "tags": "efficiency",
        "lookback_ms": 600_000,
        "threshold": 0.15,
        "ignore_below": 50,
    },
    {
        "id": "v-dev",
        "kind": "deviation",
        "tags": "dc_voltage",
        "lookback_ms": 120_000,
        "threshold": 0.1,
        "nominal": 620.0,
    },
]
ALARM_RULES: list[dict[str, Any]] = [
    {"id": "over-temp", "tags": "temperature", "limit": 85.0, "deadband": 5.0}
]
_MODELS_META = json.loads((ROOT / "models" / "inverter_models.json").read_text())
INFERENCE: dict[str, Any] = {
    "type": "inference",
    "assets": "*/pv/*/inv-*",
    "features": _MODELS_META["features"],
    "models": [
        {
            "name": m["name"],
            "path": str(ROOT / "models" / m["file"]),
            "output": m["output"],
            "column": m.get("column"),
            "negate": m.get("negate", False),
            "threshold": m.get("threshold"),
        }
        for m in _MODELS_META["models"]
    ],
}


# -- case 1: the operator chain in a Bytewax flow ---------------------------------------------
def chain(data: BenchData) -> dict[str, Any]:
    """validate -> 1m/15m aggregate -> anomaly rules -> alarms -> ONNX on 1m features."""
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.testing import TestingSink, TestingSource, run_main

    from flows.build import key_by_shard
    from operators._flow import score_windows
    from operators.aggregate.flow import aggregate
    from operators.alarm.flow import alarms
    from operators.alarm.logic import AlarmRule
    from operators.anomaly.flow import anomalies
    from operators.anomaly.logic import AnomalyRule
    from operators.inference.logic import ModelSpec, OnnxScorer, load_feature_specs
    from operators.validate.flow import coalesce, validate

    specs = load_feature_specs(INFERENCE["features"])
    models = tuple(ModelSpec(**{**m, "path": Path(m["path"])}) for m in INFERENCE["models"])
    flow = Dataflow("bench_chain")
    src = op.input("in", flow, TestingSource(data.batches()))
    keyed = key_by_shard("key", src)
    v = validate("validate", keyed, RULES)
    # As flows.build does after validation (the site config's default coalescing).
    oks = coalesce("coalesce", v.oks, max_points=50_000, max_delay_ms=100)
    agg = aggregate("agg", oks, allowed_lateness_ms=5000, idle_close=False)
    an = anomalies("anomaly", oks, tuple(AnomalyRule(**r) for r in ANOMALY_RULES))
    al = alarms("alarm", oks, tuple(AlarmRule(**r) for r in ALARM_RULES))
    scored = score_windows(
        "onnx", agg.aggregates, lambda: OnnxScorer(60_000, "*/pv/*/inv-*", specs, models)
    )
    windows: list[WindowAggregates] = []
    events: list[Any] = []
    op.output("aggs", agg.aggregates, TestingSink(windows))
    op.output("events", op.merge("ev", an, al, scored.events), TestingSink(events))
    # Dead letters, late points and scores are counted, not kept: a real flow writes them out.
    counts = {"dead": 0, "late": 0, "scores": 0}
    for name, stream in (("dead", v.errs), ("late", agg.late), ("scores", scored.kpis)):
        op.output(name, stream, _CountingSink(counts, name))
    t0 = time.perf_counter()
    run_main(flow)
    dt = time.perf_counter() - t0
    return {"seconds": dt, "checksum": _checksum(windows), "events": len(events), **counts}


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


# -- live latency ------------------------------------------------------------------------------
def live_latency(data: BenchData) -> dict[str, Any]:
    """p50/p99 from point timestamp to sink for a live stream paced in wall time.

    Points are stamped with the wall clock as they are generated; the sink notes, per batch of
    validated points, ``now - oldest point time``, and per aggregate row ``now - window end``
    (what remains is the allowed lateness plus processing: the window length is excluded).
    """
    from datetime import UTC, datetime, timedelta

    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.inputs import DynamicSource, StatelessSourcePartition
    from bytewax.outputs import DynamicSink, StatelessSinkPartition
    from bytewax.testing import run_main

    from flows.build import key_by_shard
    from operators.aggregate.flow import aggregate
    from operators.validate.flow import coalesce, validate
    from wire.records import now_ms

    step_ms = 100
    tags, _, _ = data.tags, data.mean, data.noise
    n = len(tags)
    per_step = max(1, round(data.rate_hz * step_ms / 1000))
    rng = np.random.default_rng(0)
    point_lat: list[float] = []
    agg_lat: list[float] = []

    class Part(StatelessSourcePartition[PointBatch]):
        def __init__(self) -> None:
            self.t0 = now_ms()
            self.k = 0

        def next_batch(self) -> list[PointBatch]:
            if self.k * step_ms >= data.duration_s * 1000:
                raise StopIteration
            self.k += 1
            ts = now_ms()
            m = n * per_step
            return [
                PointBatch(
                    tags,
                    np.tile(np.arange(n, dtype=np.int32), per_step),
                    np.full(m, ts, np.int64),
                    data.mean[np.tile(np.arange(n), per_step)] + rng.normal(0, 1, m),
                    np.zeros(m, np.uint8),
                    source="live",
                    received_ms=ts,
                )
            ]

        def next_awake(self) -> datetime:
            return datetime.fromtimestamp((self.t0 + self.k * step_ms) / 1000, UTC)

    class Src(DynamicSource[PointBatch]):
        def build(self, step_id: str, worker_index: int, worker_count: int) -> Part:
            return Part()

    class Lat(StatelessSinkPartition[Any]):
        def write_batch(self, items: list[Any]) -> None:
            now = now_ms()
            for kind, item in items:
                if kind == "p":
                    point_lat.append(now - int(item.ts_ms.min()))
                elif item.closed_by == "watermark":  # not the flush at end of input
                    agg_lat.extend(now - (w.start_ms + w.window_ms) for w in item.windows())

    class Sink(DynamicSink[Any]):
        def build(self, step_id: str, worker_index: int, worker_count: int) -> Lat:
            return Lat()

    flow = Dataflow("latency")
    keyed = key_by_shard("k", op.input("in", flow, Src()))
    v = validate("v", keyed, RULES)
    oks = coalesce("coalesce", v.oks, max_points=50_000, max_delay_ms=100)
    agg = aggregate("agg", oks, allowed_lateness_ms=1000, idle_close=True)
    pts = op.map("p", op.key_rm("unkey", oks), lambda b: ("p", b))
    aggs = op.map(
        "a", op.filter("1m", agg.aggregates, lambda w: w.window_ms == 60_000), lambda w: ("a", w)
    )
    op.output("out", op.merge("all", pts, aggs), Sink())
    t0 = time.perf_counter()
    run_main(flow, epoch_interval=timedelta(seconds=1))
    p = np.asarray(point_lat, np.float64)
    a = np.asarray(agg_lat, np.float64)
    return {
        "seconds": time.perf_counter() - t0,
        "points_p50_ms": float(np.percentile(p, 50)),
        "points_p99_ms": float(np.percentile(p, 99)),
        "window_close_p50_ms": float(np.percentile(a, 50)) if len(a) else None,
        "window_close_p99_ms": float(np.percentile(a, 99)) if len(a) else None,
        "window_close_max_ms": float(a.max()) if len(a) else None,
        "windows_closed": len(a),
        "allowed_lateness_ms": 1000,
    }


# -- case 3: protocol ingest lives in bench/ingest.py ----------------------------------------
CASES = {
    "chain": chain,
    "numpy": numpy_only,
    "python": python_loop,
    "fold_window": fold_window_flow,
}


# -- case 2: replay from Kafka -----------------------------------------------------------------
def _bootstrap() -> str:
    import os

    return os.environ.get("EDGEFLOW_KAFKA_BOOTSTRAP", "127.0.0.1:19092")


def _fill_topic(data: BenchData, batch_s: int) -> tuple[str, int]:
    import uuid

    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    from wire.points import encode_messages

    topic = f"edgeflow.bench.{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": _bootstrap()})
    admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])[topic].result(30)
    producer = Producer(
        {
            "bootstrap.servers": _bootstrap(),
            "linger.ms": 20,
            "compression.type": "lz4",
            "queue.buffering.max.messages": 1_000_000,
        }
    )
    messages = 0
    group: list[PointBatch] = []
    for b in data.batches():
        group.append(b)
        if len(group) * data.batch_ms >= batch_s * 1000:
            merged = PointBatch.concat(group).with_meta(source="bench", received_ms=b.received_ms)
            for key, value, _ in encode_messages(merged):
                while True:
                    try:
                        producer.produce(
                            topic, key=key.encode(), value=value, timestamp=merged.received_ms
                        )
                        break
                    except BufferError:
                        producer.poll(0.1)
                messages += 1
            group = []
    producer.flush(120)
    return topic, messages


def replay_input(bootstrap: str, topic: str) -> dict[str, Any]:
    """The Kafka input of the replay cases: the whole topic as it is at start, then stop."""
    return {
        "type": "kafka",
        "kafka": {"bootstrap_servers": bootstrap},
        "topic": topic,
        "bounded": True,
        "batch_size": 20_000,
    }


# validate -> 1m/15m aggregates -> anomaly rules, on event time only (replays).
REPLAY_CHAIN: list[dict[str, Any]] = [
    {
        "type": "validate",
        "ranges": [{"tags": "*", "min": -1e6, "max": 1e6}],
        "max_future_ms": None,
        "max_past_ms": None,
    },
    {"type": "aggregate", "allowed_lateness_ms": 5000, "idle_close": False},
    {"type": "anomaly", "rules": ANOMALY_RULES},
]


def kafka_consume(data: BenchData) -> dict[str, Any]:
    """Reference: raw confluent-kafka consumption of the raw topic, decoding nothing."""
    from confluent_kafka import Consumer, TopicPartition

    topic, messages = _fill_topic(data, 10)
    c = Consumer(
        {"bootstrap.servers": _bootstrap(), "group.id": "bench", "enable.auto.commit": False}
    )
    parts = c.list_topics(topic, timeout=10).topics[topic].partitions
    c.assign([TopicPartition(topic, p, 0) for p in parts])
    t0 = time.perf_counter()
    seen = 0
    while seen < messages:
        seen += len(c.consume(10_000, timeout=1.0))
    dt = time.perf_counter() - t0
    c.close()
    return {"seconds": dt, "messages": messages}


def kafka_replay(data: BenchData) -> dict[str, Any]:
    """Case 2: raw topic -> the chain of case 1 -> topics (aggregates, events, late, ...)."""
    import uuid

    from flows.build import build_flow
    from flows.config import parse_site

    topic, messages = _fill_topic(data, 10)
    run = uuid.uuid4().hex[:8]
    site = parse_site(
        {
            "name": "bench",
            "site": {"enterprise": "bench", "site": "site"},
            "inputs": [replay_input(_bootstrap(), topic)],
            "operators": [
                *REPLAY_CHAIN,
                {"type": "alarm", "rules": ALARM_RULES},
                INFERENCE,
            ],
            "sinks": [
                {
                    "type": "kafka",
                    "kafka": {"bootstrap_servers": _bootstrap()},
                    "topics": {
                        name: f"edgeflow.bench.{run}.{name}"
                        for name in ("aggregates", "events", "kpis", "late", "dead_letters")
                    },
                }
            ],
        }
    )
    from bytewax.testing import run_main

    flow = build_flow(site, name="bench")
    t0 = time.perf_counter()
    run_main(flow)
    return {"seconds": time.perf_counter() - t0, "messages": messages}


# -- case 4: sinks -----------------------------------------------------------------------------
def _agg_rows(data: BenchData) -> list[dict[str, Any]]:
    agg = TumblingAggregator(allowed_lateness_ms=5000, idle_close=False)
    windows: list[WindowAggregates] = []
    for b in _valid_batches(data):
        windows += agg.add(b, 0)[0]
    windows += agg.flush()
    return [r for w in windows for r in w.rows()]


def postgres_sink(data: BenchData) -> dict[str, Any]:
    """Case 4: aggregate rows/s into PostgreSQL (COPY + upsert), in 5,000-row batches."""
    import os
    import uuid

    import psycopg

    from connectors.timescale.config import TimescaleSinkConfig
    from connectors.timescale.sink import spooled

    dsn = os.environ.get(
        "EDGEFLOW_PG_DSN", "postgresql://edgeflow:edgeflow@127.0.0.1:15432/edgeflow"
    )
    rows = _agg_rows(data)
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    import tempfile

    cfg = TimescaleSinkConfig(type="timescaledb", dsn=dsn, schema=schema)
    spool = Path(tempfile.mkdtemp(prefix="edgeflow-bench-spool-"))
    step = spooled(cfg, spool)
    items = [("aggregates", r) for r in rows]
    # Measured from the first row spooled to the last one committed in the database.
    t0 = time.perf_counter()
    for i in range(0, len(items), 5000):
        step.on_batch(items[i : i + 5000])
    step.on_eof()
    dt = time.perf_counter() - t0
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'drop schema "{schema}" cascade')
    return {"seconds": dt, "rows": len(rows)}


def _influx_admin() -> tuple[str, str]:
    import os
    from pathlib import Path

    env = Path(os.environ.get("EDGEFLOW_INFRA_DIR", "/var/tmp/edgeflow-infra")) / "secrets.env"
    pairs = dict(line.split("=", 1) for line in env.read_text().splitlines() if "=" in line)
    return "admin", pairs["INFLUX_ADMIN_PASSWORD"]


def influx_sink(data: BenchData) -> dict[str, Any]:
    """Case 4: aggregate rows/s into InfluxDB 1.x (line protocol, gzip), 5,000 per request."""
    import os
    import urllib.parse
    import urllib.request
    import uuid

    from connectors.influx.config import InfluxSinkConfig
    from connectors.influx.writer import InfluxWriter

    url = os.environ.get("EDGEFLOW_INFLUX_URL", "http://127.0.0.1:18086")
    db = f"bench_{uuid.uuid4().hex[:8]}"
    admin = _influx_admin()
    cfg = InfluxSinkConfig(
        type="influxdb", url=url, database=db, username=admin[0], password=admin[1]
    )

    def query(stmt: str) -> None:
        req = urllib.request.Request(
            f"{url}/query", data=urllib.parse.urlencode({"q": stmt}).encode()
        )
        req.add_header("Authorization", InfluxWriter(cfg)._endpoint()[1]["Authorization"])
        urllib.request.urlopen(req, timeout=10).close()

    query(f'CREATE DATABASE "{db}"')
    rows = _agg_rows(data)
    w = InfluxWriter(cfg)
    t0 = time.perf_counter()
    dead = w.write([("aggregates", r) for r in rows])
    dt = time.perf_counter() - t0
    query(f'DROP DATABASE "{db}"')
    return {"seconds": dt, "rows": len(rows), "dead": len(dead)}


CASES.update(
    {
        "live_latency": live_latency,
        "kafka_consume": kafka_consume,
        "kafka_replay": kafka_replay,
        "postgres_sink": postgres_sink,
        "influx_sink": influx_sink,
    }
)


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
    if "rows" in res:
        res["rows_per_s"] = res["rows"] / res["seconds"]
    json.dump(res, sys.stdout)
    print()


if __name__ == "__main__":
    main()
