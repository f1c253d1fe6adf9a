"""Case 5: a live edge flow at 100k points/s writing its raw points to Kafka keeps pace.

``python -m bench.live_kafka [--quick]`` runs the product's own wiring (``flows.build``): a
live input paced in wall time (10,000 tags at 10 Hz, every 100 ms a batch stamped with the
time it is due), validation and 1 min / 15 min aggregates, and the Kafka sink (spool, delivery
thread) writing the raw stream to a fresh topic. A consumer in another process reads the
topic as it fills and notes, per message, how long after the newest point in it the message
could be read (the message time is the edge's receive time). Printed beside it: the same flow
without the Kafka sink (its points/s is the pace to keep).

The goal (issue 14): lag below 1 s throughout 3 minutes on one worker.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import numpy as np
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from pydantic import Field
from typing_extensions import override

from bench.data import make_tags
from flows.build import Build
from flows.registry import InputModel, register
from wire.records import PointBatch, now_ms

__all__ = ["LiveInput", "main"]

STEP_MS = 100


class LiveInput(InputModel):
    """Synthetic live points paced in wall time (bench only)."""

    type: Literal["bench_live"]
    id: str = "live"
    tags: int = Field(default=10_000, gt=0)
    hz: float = Field(default=10.0, gt=0)
    seconds: float = Field(default=190.0, gt=0)


class _Part(StatefulSourcePartition[PointBatch, None]):
    def __init__(self, cfg: LiveInput) -> None:
        self.tags, self.mean, _ = make_tags(cfg.tags)
        self.per_step = max(1, round(cfg.hz * STEP_MS / 1000))
        self.steps = int(cfg.seconds * 1000 / STEP_MS)
        self.rng = np.random.default_rng(0)
        self.t0 = now_ms()
        self.k = 0

    @override
    def next_batch(self) -> list[PointBatch]:
        if self.k >= self.steps:
            raise StopIteration
        due = self.t0 + self.k * STEP_MS
        if now_ms() < due:
            return []
        self.k += 1
        n = len(self.tags)
        idx = np.tile(np.arange(n, dtype=np.int32), self.per_step)
        # Stamped when due, not when polled: a flow that falls behind shows as lag.
        ts = due
        return [
            PointBatch(
                self.tags,
                idx,
                np.full(len(idx), ts, np.int64),
                self.mean[idx] + self.rng.normal(0, 1, len(idx)),
                np.zeros(len(idx), np.uint8),
                source="live",
                received_ms=ts,
            )
        ]

    @override
    def next_awake(self) -> datetime:
        return datetime.fromtimestamp((self.t0 + self.k * STEP_MS) / 1000, UTC)

    @override
    def snapshot(self) -> None:
        return None


class _Source(FixedPartitionedSource[PointBatch, None]):
    def __init__(self, cfg: LiveInput) -> None:
        self.cfg = cfg

    @override
    def list_parts(self) -> list[str]:
        return ["live"]

    @override
    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _Part:
        return _Part(self.cfg)


@register("input", "bench_live", LiveInput, emits=("raw",))
def _build(cfg: LiveInput, b: Build) -> None:
    b.input(cfg.id, _Source(cfg))


def _site(seconds: float, topic: str | None, bootstrap: str) -> dict[str, Any]:
    import tempfile

    # Both variants write the aggregates locally; one also sends the raw points to Kafka.
    out = tempfile.mkdtemp(prefix="edgeflow-bench-live-")
    sinks: list[dict[str, Any]] = [{"type": "file", "dir": out, "streams": ["aggregates"]}]
    if topic is not None:
        sinks.append(
            {"type": "kafka", "kafka": {"bootstrap_servers": bootstrap}, "topics": {"raw": topic}}
        )
    return {
        "name": "bench-live",
        "site": {"enterprise": "bench", "site": "live"},
        "inputs": [{"type": "bench_live", "seconds": seconds}],
        "operators": [
            {"type": "validate", "ranges": [{"tags": "*", "min": -1e6, "max": 1e6}]},
            {"type": "aggregate", "window_ms": 60_000, "rollup_ms": [900_000]},
        ],
        "sinks": sinks,
    }


def consume(bootstrap: str, topic: str, seconds: float) -> None:
    """Read ``topic`` as it fills; print lag statistics (ms) as one JSON line."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    c = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"bench-{uuid.uuid4().hex}", "log_level": 0}
    )
    parts = c.list_topics(topic, timeout=30).topics[topic].partitions
    c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
    lags: list[int] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for m in c.consume(1000, timeout=0.2):
            if m.error() is None:
                lags.append(now_ms() - m.timestamp()[1])
    c.close()
    a = np.asarray(lags or [0], np.float64)
    json.dump(
        {
            "messages": len(lags),
            "lag_p50_ms": float(np.percentile(a, 50)),
            "lag_p99_ms": float(np.percentile(a, 99)),
            "lag_max_ms": float(a.max()),
        },
        sys.stdout,
    )


def _run(seconds: float, topic: str | None, bootstrap: str) -> dict[str, Any]:
    from bytewax.testing import run_main

    from flows.build import build_flow
    from flows.config import parse_site
    from flows.registry import load_components

    load_components()
    flow = build_flow(parse_site(_site(seconds, topic, bootstrap)))
    t0 = time.perf_counter()
    run_main(flow, epoch_interval=timedelta(seconds=1))
    return {"seconds": time.perf_counter() - t0}


def main() -> None:
    """Run case 5 and print one JSON line."""
    p = argparse.ArgumentParser()
    p.add_argument("mode", nargs="?", default="run", choices=["run", "consume", "flow"])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--topic")
    p.add_argument("--seconds", type=float, default=190.0)
    p.add_argument("--bootstrap", default="127.0.0.1:19092")
    a = p.parse_args()
    if a.mode == "consume":
        consume(a.bootstrap, a.topic, a.seconds)
        return
    if a.mode == "flow":
        json.dump(_run(a.seconds, a.topic, a.bootstrap), sys.stdout)
        return
    seconds = 30.0 if a.quick else 190.0
    from confluent_kafka.admin import AdminClient, NewTopic

    topic = f"edgeflow.bench.live.{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": a.bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result(30)
    here = [sys.executable, "-m", "bench.live_kafka"]
    reader = subprocess.Popen(
        [*here, "consume", "--topic", topic, "--seconds", str(seconds + 15)],
        stdout=subprocess.PIPE,
        text=True,
    )
    flow = subprocess.run(
        [*here, "flow", "--topic", topic, "--seconds", str(seconds)],
        check=True,
        capture_output=True,
        text=True,
    )
    out, _ = reader.communicate(timeout=seconds + 60)
    lag = json.loads(out)
    with_sink = json.loads(flow.stdout.strip().splitlines()[-1])
    alone = subprocess.run(
        [*here, "flow", "--seconds", str(seconds)], check=True, capture_output=True, text=True
    )
    without = json.loads(alone.stdout.strip().splitlines()[-1])
    admin.delete_topics([topic])
    points = 10_000 * 10 * seconds
    json.dump(
        {
            "case": "live_kafka",
            "points": points,
            "offered_per_s": 100_000,
            "per_s": points / with_sink["seconds"],
            "reference_per_s": points / without["seconds"],
            **lag,
        },
        sys.stdout,
    )


if __name__ == "__main__":
    main()
