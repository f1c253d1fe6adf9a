"""Case 8: many small sites in one processor: state and per-epoch snapshot cost per site.

``python -m bench.many_sites [--quick]`` feeds 50 and then 500 sites of 20 tags (1 Hz, 20 min
of event time, in 10 s batches per site, as the Kafka input hands them over) through the
processor's stateful steps, one state per shard as bytewax keeps them (validate, 1 min /
15 min aggregates, anomaly rules, alarms), then half of the sites fall silent for 20 min
while the others go on. At each stage it prints the snapshot a recovery epoch takes (the
``deepcopy`` each step's ``snapshot()`` returns, then pickled: bytes and seconds), per site,
beside the snapshot of a fresh, empty state: memory and snapshot cost follow the state a site
holds (its open windows and lookbacks), not the number of sites times a constant blob.
"""

from __future__ import annotations

import argparse
import copy
import json
import pickle
import sys
import time
from typing import Any

import numpy as np

from bench.cases import ALARM_RULES, ANOMALY_RULES, RULES
from operators.aggregate.logic import TumblingAggregator
from operators.alarm.logic import AlarmEngine, AlarmRule
from operators.anomaly.logic import AnomalyDetector, AnomalyRule
from operators.validate.logic import Validator
from wire.records import PointBatch, TagRef

__all__ = ["main"]

START_MS = 1_780_000_000_000
NAMES = ("ac_power", "dc_voltage", "temperature", "soc", "irradiance")


def _states() -> list[Any]:
    return [
        Validator(RULES),
        TumblingAggregator(allowed_lateness_ms=5000, idle_close=False),
        AnomalyDetector(tuple(AnomalyRule(**r) for r in ANOMALY_RULES)),
        AlarmEngine(tuple(AlarmRule(**r) for r in ALARM_RULES)),
    ]


def _feed(states: list[Any], batch: PointBatch) -> None:
    v, agg, an, al = states
    ok = v.process(batch).ok
    agg.add(ok, 0)
    an.process(ok)
    al.process(ok)


def _snapshot(shards: dict[str, list[Any]]) -> tuple[int, float]:
    """Bytes and seconds of one epoch's snapshot of every shard's states."""
    t0 = time.perf_counter()
    size = sum(len(pickle.dumps(copy.deepcopy(s))) for st in shards.values() for s in st)
    return size, time.perf_counter() - t0


def _tags(site: int) -> tuple[TagRef, ...]:
    return tuple(
        TagRef(f"acme/site-{site:04d}/pv/inv-{i // 5 + 1:02d}/{NAMES[i % 5]}", "kW")
        for i in range(20)
    )


def _batch(tags: tuple[TagRef, ...], t0_s: int, rng: np.random.Generator) -> PointBatch:
    n = len(tags)
    ts = START_MS + (t0_s + np.repeat(np.arange(10), n)) * 1000
    return PointBatch(
        tags,
        np.tile(np.arange(n, dtype=np.int32), 10),
        ts.astype(np.int64),
        50 + rng.normal(0, 1, 10 * n),
        np.zeros(10 * n, np.uint8),
    )


def measure(sites: int, minutes: int) -> dict[str, Any]:
    """Feed ``sites`` sites for ``minutes``, then half of them for as long again."""
    rng = np.random.default_rng(11)
    tags = [_tags(s) for s in range(sites)]
    shards = {f"acme/site-{s:04d}": _states() for s in range(sites)}
    keys = list(shards)
    fresh, _ = _snapshot({"fresh": _states()})
    out: dict[str, Any] = {"sites": sites, "fresh_state_bytes": fresh}
    t0 = time.perf_counter()
    for t in range(0, minutes * 60, 10):
        for s, key in enumerate(keys):
            _feed(shards[key], _batch(tags[s], t, rng))
    points = sites * 20 * minutes * 60
    out["points_per_s"] = points / (time.perf_counter() - t0)
    size, secs = _snapshot(shards)
    out["all_active"] = {"bytes_per_site": size / sites, "snapshot_s": secs}
    for t in range(minutes * 60, 2 * minutes * 60, 10):
        for s, key in enumerate(keys[: sites // 2]):
            _feed(shards[key], _batch(tags[s], t, rng))
    half = {k: shards[k] for k in keys[: sites // 2]}
    silent = {k: shards[k] for k in keys[sites // 2 :]}
    a_size, a_secs = _snapshot(half)
    s_size, s_secs = _snapshot(silent)
    out["half_silent"] = {
        "active_bytes_per_site": a_size / len(half),
        "silent_bytes_per_site": s_size / len(silent),
        "snapshot_s": a_secs + s_secs,
    }
    return out


def main() -> None:
    """Run case 8 and print one JSON line."""
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    a = p.parse_args()
    minutes = 5 if a.quick else 20
    r = {"case": "many_sites", "runs": [measure(n, minutes) for n in (50, 500)]}
    json.dump(r, sys.stdout)
    print()


if __name__ == "__main__":
    main()
