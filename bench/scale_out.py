"""Case 6: the processor over a 6-partition raw topic of 4 sites, on 1, 2 workers and 2 processes.

``python -m bench.scale_out [--quick]`` fills a fresh topic with 4 sites' points (keyed by
shard, as the edge ``kafka`` sink writes them: here the line, so each site's lines spread over
partitions and workers), then runs ``python -m bytewax.run flows.process`` on it (bounded
replay: validate -> 1 min / 15 min aggregates -> anomaly rules) as

- 1 process, 1 worker (the reference),
- 1 process, ``-w 2`` (threads: one GIL),
- 2 processes, ``-i 0|1 -a "host:port;host:port"`` (bytewax's cluster on one host),

and prints points/s (wall time from start to exit, less the start-up time of the same command
on an empty topic; the median of 3 runs, the layouts taking turns) and the peak RSS of each
process, beside one worker reading half the partitions (the memory of the same share of the
data as each process holds). Goal (issue 16): on 2 cores, 2 processes
>= 1.6x the points/s of 1, memory per process within 1.2x of the single process's for the same
share of the data.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from bench.cases import REPLAY_CHAIN, replay_input
from bench.data import MACHINE_TAGS, START_MS
from wire.records import PointBatch, TagRef

__all__ = ["main"]

ROOT = Path(__file__).resolve().parents[1]
SITES = ("north", "south", "east", "west")
# 16 lines per site: 64 shards. bytewax places a key's state by a hash of the key, so with
# few shards one worker gets more than half (4 lines: 11 of 16 shards, 1.28x; see README).
LINES = int(os.environ.get("EDGEFLOW_BENCH_LINES", "16"))


def _tags(machines_per_site: int) -> tuple[tuple[TagRef, ...], np.ndarray]:
    tags: list[TagRef] = []
    means: list[float] = []
    for site in SITES:
        for m in range(machines_per_site):
            for name, unit, mean, _sd in MACHINE_TAGS:
                path = f"bench/{site}/pv/line-{m % LINES}/inv-{m:04d}/{name}"
                tags.append(TagRef(path, unit))
                means.append(mean)
    return tuple(tags), np.asarray(means)


def fill(bootstrap: str, topic: str, *, machines_per_site: int, seconds: int) -> int:
    """Write ``seconds`` of 1 Hz data of every tag (a message per shard and 10 s); return points."""
    from confluent_kafka import Producer

    from wire.points import encode_messages

    tags, means = _tags(machines_per_site)
    rng = np.random.default_rng(3)
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 20,
            "compression.type": "lz4",
            "queue.buffering.max.messages": 1_000_000,
        }
    )
    n = len(tags)
    points = 0
    for t0 in range(0, seconds, 10):
        k = min(10, seconds - t0)
        idx = np.tile(np.arange(n, dtype=np.int32), k)
        ts = START_MS + (t0 + np.repeat(np.arange(k), n)) * 1000
        batch = PointBatch(
            tags,
            idx,
            ts.astype(np.int64),
            means[idx] + rng.normal(0.0, 1.0, k * n),
            np.zeros(k * n, np.uint8),
            source="bench",
            received_ms=int(ts.max()),
        )
        for key, value, newest in encode_messages(batch, shard_levels=4, max_points=50_000):
            while True:
                try:
                    producer.produce(topic, key=key.encode(), value=value, timestamp=newest)
                    break
                except BufferError:
                    producer.poll(0.1)
        points += len(batch)
    producer.flush(300)
    return points


def _topic(bootstrap: str) -> str:
    from confluent_kafka.admin import AdminClient, NewTopic

    name = f"edgeflow.bench.scale.{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    new = NewTopic(name, num_partitions=6, replication_factor=1, config={"retention.ms": "-1"})
    admin.create_topics([new])[name].result(30)
    return name


def _site(bootstrap: str, topic: str, out: Path) -> dict[str, Any]:
    return {
        "name": "bench-scale",
        "site": {"enterprise": "bench", "site": "all", "shard": "line"},
        "inputs": [replay_input(bootstrap, topic)],
        "operators": REPLAY_CHAIN,
        "sinks": [{"type": "file", "dir": str(out), "streams": ["aggregates", "events"]}],
    }


def _broker_cpu_s() -> float | None:
    """CPU seconds the local Kafka broker (infra/local) has used so far, if it can be read."""
    base = Path(os.environ.get("EDGEFLOW_INFRA_DIR", "/var/tmp/edgeflow-infra"))
    try:
        pid = int((base / "kafka" / "kafka.pid").read_text().split()[0])
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, ValueError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _run(
    site: Path, cwd: Path, variants: list[list[str]]
) -> tuple[float, list[float], list[float]]:
    """Start one process per argument list; return wall s, peak RSS MB and CPU s of each."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "EDGEFLOW_SITE": str(site)}
    env["EDGEFLOW_LOG_LEVEL"] = "WARNING"
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "bytewax.run", "flows.process", *args],
            cwd=cwd,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for args in variants
    ]
    rss: list[float] = []
    cpu: list[float] = []
    for p in procs:
        _pid, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        if p.returncode != 0:
            err = p.stderr.read().decode()[-2000:] if p.stderr else ""
            msg = f"flows.process {variants} exited {p.returncode}: {err}"
            raise RuntimeError(msg)
        rss.append(usage.ru_maxrss / 1024)
        cpu.append(usage.ru_utime + usage.ru_stime)
    return time.perf_counter() - t0, rss, cpu


def _free_ports(n: int) -> list[int]:
    import socket

    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _median(xs: list[float]) -> float:
    return float(np.median(np.asarray(xs)))


def measure(
    bootstrap: str, *, machines_per_site: int, seconds: int, repeats: int
) -> dict[str, Any]:
    """Fill a topic, run the layouts on it (and on an empty topic); return the numbers.

    Each layout runs ``repeats`` times, the layouts taking turns (so a slow spell of the
    machine hits them alike); points/s is the median. ``half`` is one worker reading half the
    partitions (the site-file ``partitions`` setting): the memory reference for the same share
    of the data as each of the 2 processes holds.
    """
    full, empty = _topic(bootstrap), _topic(bootstrap)
    points = fill(bootstrap, full, machines_per_site=machines_per_site, seconds=seconds)
    a, b = _free_ports(2)
    cluster = f"127.0.0.1:{a};127.0.0.1:{b}"
    layouts: dict[str, tuple[list[list[str]], tuple[int, ...] | None]] = {
        "1 worker": ([[]], None),
        "2 workers": ([["-w", "2"]], None),
        "2 processes": ([["-i", "0", "-a", cluster], ["-i", "1", "-a", cluster]], None),
        "half": ([[]], (0, 1, 2)),
    }
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in layouts}
    with tempfile.TemporaryDirectory(prefix="edgeflow-bench-scale-") as tmp:
        for rep in range(repeats):
            for name, (variants, partitions) in layouts.items():
                d = Path(tmp) / f"{name.replace(' ', '-')}-{rep}"
                d.mkdir()
                results = {}
                broker = 0.0
                for which, topic in (("empty", empty), ("full", full)):
                    site = d / f"{which}.yaml"
                    cfg = _site(bootstrap, topic, d / which)
                    if partitions is not None:
                        cfg["inputs"][0]["partitions"] = list(partitions)
                    site.write_text(yaml.safe_dump(cfg))
                    before = _broker_cpu_s()
                    results[which] = _run(site, d, variants)
                    after = _broker_cpu_s()
                    if before is not None and after is not None:
                        broker = after - before
                wall, rss, cpu = results["full"]
                startup, _, startup_cpu = results["empty"]
                shards = [
                    len({json.loads(line)["path"].rsplit("/", 2)[0] for line in f.open()})
                    for f in sorted((d / "full").glob("aggregates*.jsonl"))
                ]
                runs[name].append(
                    {
                        "seconds": wall,
                        "startup_s": startup,
                        "per_s": points / max(wall - startup, 1e-9),
                        "rss_mb": rss,
                        "cpu_s": [c - startup_cpu[0] for c in cpu],
                        "broker_cpu_s": broker,
                        "shards": shards,
                    }
                )
    rows: dict[str, Any] = {}
    for name, rs in runs.items():
        mid = sorted(rs, key=lambda r: r["per_s"])[len(rs) // 2]
        rows[name] = {**mid, "per_s_runs": [r["per_s"] for r in rs]}
    base = rows["1 worker"]["per_s"]
    for r in rows.values():
        r["speedup"] = r["per_s"] / base
        r["speedup_runs"] = [
            x / y for x, y in zip(r["per_s_runs"], rows["1 worker"]["per_s_runs"], strict=True)
        ]
    half_rss = _median([r["rss_mb"][0] for r in runs["half"]])
    rows["2 processes"]["rss_vs_half"] = max(rows["2 processes"]["rss_mb"]) / half_rss
    return {
        "case": "scale_out",
        "points": points,
        "tags": len(_tags(machines_per_site)[0]),
        "repeats": repeats,
        **rows,
    }


def main() -> None:
    """Run case 6 and print one JSON line."""
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    p.add_argument(
        "--bootstrap", default=os.environ.get("EDGEFLOW_KAFKA_BOOTSTRAP", "127.0.0.1:19092")
    )
    a = p.parse_args()
    r = measure(
        a.bootstrap,
        machines_per_site=50 if a.quick else 250,
        seconds=300 if a.quick else 900,
        repeats=1 if a.quick else 3,
    )
    json.dump(r, sys.stdout)
    print()


if __name__ == "__main__":
    main()
