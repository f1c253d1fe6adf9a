"""Benchmark suite: ``python -m bench [--quick]`` prints a table of points/s and peak RSS.

Each case runs in a fresh process on the same generated data (1% invalid, 1% late points):

- ``chain``: the operator chain in a Bytewax flow on one worker (validate -> 1m/15m
  aggregates -> four anomaly rules -> alarm -> ONNX on 1m features);
- ``numpy``: the same validation and aggregates in numpy without a dataflow (the limit);
- ``python``: a plain per-point Python loop (count/sum/min/max only);
- ``fold_window``: plain per-point Bytewax ``fold_window`` at 1m and 15m (count/sum/min/max).

The chain's aggregates must equal the numpy reference (row counts, point counts, sums).

Then ``live_latency`` (a 100k points/s stream paced in wall time, 190 s) and, when the
infra/local services run, Kafka replay against raw consumption (case 2), sink rows/s
(case 4), the live 100k points/s edge flow with a raw Kafka sink (case 5,
:mod:`bench.live_kafka`), the processor on 1, 2 workers and 2 processes (case 6,
:mod:`bench.scale_out`), long histories from files and a topic with the backtest report's
memory (case 7, :mod:`bench.history`), many small sites' state and snapshot cost (case 8,
:mod:`bench.many_sites`) and protocol ingest (case 3, :mod:`bench.ingest`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from typing import Any

DATASETS = [  # tags, Hz, seconds of data
    (1_000, 1.0, 1800),
    (1_000, 10.0, 600),
    (10_000, 1.0, 900),
    (10_000, 10.0, 120),
]
QUICK = [(1_000, 1.0, 300)]
SLOW_REFERENCES = {"python": 1800, "fold_window": 120}  # seconds of data for the slow ones


def run_case(case: str, tags: int, hz: float, seconds: float) -> dict[str, Any]:
    """Run one case in a subprocess and return its JSON result."""
    cmd = [
        sys.executable,
        "-m",
        "bench.cases",
        case,
        "--tags",
        str(tags),
        "--hz",
        str(hz),
        "--seconds",
        str(seconds),
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=os.environ)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def machine() -> str:
    """Describe the machine the numbers were taken on."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


SERVICE_CASES = [  # case, tags, Hz, seconds, note
    ("kafka_consume", 1_000, 1.0, 1800, "raw consume of the raw topic: the limit for replay"),
    ("kafka_replay", 1_000, 1.0, 1800, "case 2: raw topic -> the chain of case 1 -> topics"),
    ("postgres_sink", 1_000, 1.0, 3600, "case 4: aggregate rows/s, COPY + upsert"),
    ("influx_sink", 1_000, 1.0, 3600, "case 4: aggregate rows/s, line protocol + gzip"),
]


def _up(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def service_cases(quick: bool) -> None:
    """Cases against the infra/local services (skipped, and said so, when a service is down)."""
    ports = {"kafka": 19092, "postgres": 15432, "influx": 18086}
    for case, tags, hz, seconds, note in SERVICE_CASES:
        service = "kafka" if case.startswith("ingest") else case.split("_")[0]
        if not _up(ports[service]):
            print(f"{case:<14} skipped: {service} is not running (bash infra/local/start.sh)")
            continue
        r = run_case(case, tags, hz, seconds / 6 if quick else seconds)
        if "rows_per_s" in r:
            size, rate = f"{r['rows']:>11,} rows", f"{r['rows_per_s']:>12,.0f} rows/s"
        else:
            size, rate = f"{r['points']:>11,} pts ", f"{r['points_per_s']:>12,.0f} pts/s "
        print(
            f"{case:<14} {r['tags']:>6} {r['hz']:>4g} {size} {rate} "
            f"{r['peak_rss_mb']:>6.0f} MB  {note}"
        )


INGEST_CASES = [  # case 3: python -m bench.ingest CASE
    ("opcua_1hz", "OPC UA: 10,000 nodes at 1 Hz, subscription"),
    ("opcua_10hz", "OPC UA: 10,000 nodes at 10 Hz (capacity)"),
    ("mqtt", "MQTT JSON: a backlog of messages, QoS 1"),
    ("sparkplug", "Sparkplug B DDATA, 1,000 metrics per message"),
    ("modbus", "Modbus: 100 units x 100 registers at 1 Hz"),
]


def ingest_cases(quick: bool) -> None:
    """Case 3: ingest at plant scale against node-opcua, mosquitto and modbus-serial servers."""
    interop = os.path.join(os.path.dirname(__file__), "..", "tests", "interop", "node_modules")
    if not os.path.isdir(interop) or not _up(11883):
        print("ingest         skipped: run bash infra/local/install.sh and start.sh first")
        return
    print(f"{'ingest (case 3)':<16} {'values':>10} {'values/s':>12} {'raw lib/s':>12}  what")
    for case, what in INGEST_CASES:
        cmd = [sys.executable, "-m", "bench.ingest", case] + (["--quick"] if quick else [])
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=os.environ)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        extra = ""
        if case == "modbus":
            extra = (
                f"; {r['polls']:,} polls of {r['expected_polls']:,} due, {r['missed_polls']} "
                f"missed, lateness p50 {r['lateness_p50_ms']:.1f} ms, p99 "
                f"{r['lateness_p99_ms']:.1f} ms"
            )
        print(
            f"{r['case']:<16} {r['values']:>10,} {r['per_s']:>12,.0f} "
            f"{r['reference_per_s']:>12,.0f}  {what}{extra} (raw: {r['reference']})"
        )


def _kafka_case(module: str, quick: bool) -> dict[str, Any] | None:
    """Run ``python -m bench.MODULE``; its JSON line, or None (said so) when Kafka is down."""
    if not _up(19092):
        print(f"{module:<14} skipped: kafka is not running (bash infra/local/start.sh)")
        return None
    cmd = [sys.executable, "-m", f"bench.{module}"] + (["--quick"] if quick else [])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=os.environ)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def live_kafka_case(quick: bool) -> None:
    """Case 5: the live 100k points/s edge flow with its raw points to Kafka keeps pace."""
    r = _kafka_case("live_kafka", quick)
    if r is None:
        return
    print(
        f"{'live_kafka':<14} {r['points']:>11,.0f} pts {r['per_s']:>10,.0f} pts/s (offered "
        f"{r['offered_per_s']:,}/s; without the Kafka sink {r['reference_per_s']:,.0f}/s); "
        f"raw topic lag p50 {r['lag_p50_ms']:.0f} ms, p99 {r['lag_p99_ms']:.0f} ms, "
        f"max {r['lag_max_ms']:.0f} ms over {r['messages']:,} messages (goal: < 1,000 ms)"
    )


def scale_out_case(quick: bool) -> None:
    """Case 6: the processor on 1 worker, 2 workers and a 2-process cluster, side by side."""
    r = _kafka_case("scale_out", quick)
    if r is None:
        return
    print(
        f"scale_out (case 6): {r['points']:,} points of {r['tags']:,} tags, 4 sites, "
        "6 partitions, shard = line (16 per site)"
    )
    print(
        f"{'layout':<14} {'points/s':>12} {'speedup':>8} {'CPU s per process':>22}  "
        "peak MB  shards  (speedup of each run)"
    )
    for name in ("1 worker", "2 workers", "2 processes"):
        x = r[name]
        cpu = " + ".join(f"{c:.1f}" for c in x["cpu_s"])
        rss = " + ".join(f"{m:.0f}" for m in x["rss_mb"])
        shards = " + ".join(str(n) for n in x["shards"])
        runs = ", ".join(f"{s:.2f}" for s in x["speedup_runs"])
        print(
            f"{name:<14} {x['per_s']:>12,.0f} {x['speedup']:>7.2f}x {cpu:>22}  {rss}  "
            f"{shards}  ({runs})"
        )
    half = r["half"]
    print(
        f"{'half':<14} {'':>12} {'':>8} {half['cpu_s'][0]:>22.1f}  {half['rss_mb'][0]:.0f}  "
        f"{half['shards'][0]}  (1 worker reading partitions 0-2: the memory reference)"
    )
    print(
        f"median of {r['repeats']} runs, the layouts taking turns; goal on 2 cores: 2 processes "
        f">= 1.60x; their peak RSS is {r['2 processes']['rss_vs_half']:.2f}x that of 1 worker "
        "reading half the partitions (goal <= 1.2x)"
    )


def many_sites_case(quick: bool) -> None:
    """Case 8: 50 and 500 small sites in one processor: state and snapshot cost per site."""
    cmd = [sys.executable, "-m", "bench.many_sites"] + (["--quick"] if quick else [])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=os.environ)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    print(
        f"{'many sites (case 8)':<20} {'points/s':>9} {'KB/site':>8} {'snapshot s':>11} "
        f"{'half silent: KB/site active':>28} {'silent':>7}  {'fresh KB':>8}"
    )
    for x in r["runs"]:
        a, h = x["all_active"], x["half_silent"]
        print(
            f"{x['sites']:>5} sites x 20 tags  {x['points_per_s']:>9,.0f} "
            f"{a['bytes_per_site'] / 1024:>8.0f} {a['snapshot_s']:>11.2f} "
            f"{h['active_bytes_per_site'] / 1024:>28.0f} {h['silent_bytes_per_site'] / 1024:>7.0f}"
            f"  {x['fresh_state_bytes'] / 1024:>8.1f}"
        )


def history_case(quick: bool) -> None:
    """Case 7: long histories of few tags from files and a topic, beside their raw read rate."""
    cmd = [sys.executable, "-m", "bench.history"] + (["--quick"] if quick else [])
    if not _up(19092):
        cmd.append("--no-kafka")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=os.environ)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"{'history (case 7)':<16} {'points':>11} {'points/s':>12} {'raw read/s':>12}  what")
    rows = [
        ("month_csv_1m", "a month, 6 tags at 1 min, CSV: 1 min / 15 min windows (median)"),
        ("month_csv", "the same in 1 h windows + daily rollup (median)"),
        ("day_parquet", "a day, 100 tags at 1 Hz, Parquet: 1 min / 15 min windows"),
        ("day_kafka", "the same day from a topic (edgeflow load, 1 partition)"),
    ]
    for key, what in rows:
        x = r.get(key)
        if x is None or "skipped" in x:
            print(f"{key:<16} skipped: {x['skipped'] if x else 'not run'}")
            continue
        print(f"{key:<16} {x['points']:>11,} {x['per_s']:>12,.0f} {x['raw_per_s']:>12,.0f}  {what}")
        if "runs" in x:
            each = ", ".join(f"{v / 1e6:.2f}" for v in x["runs"])
            print(f"{'':<16} {'':>11} {'':>12} {'':>12}  runs (M points/s): {each}")
    for key in ("report", "report_3d"):
        x = r[key]
        print(
            f"{key:<16} {x['points']:>11,} {x['per_s']:>12,.0f} {'':>12}  edgeflow backtest with "
            f"its report over {x['days']:g} day(s) of the Parquet history: peak RSS "
            f"{x['rss_mb']:.0f} MB (goal < 300)"
        )


def main() -> None:
    """Run the suite and print the table."""
    p = argparse.ArgumentParser(description="edgeflow benchmarks")
    p.add_argument("--quick", action="store_true", help="one small dataset (about a minute)")
    args = p.parse_args()
    datasets = QUICK if args.quick else DATASETS
    t0 = time.perf_counter()
    print(f"# edgeflow bench — {machine()}")
    print(
        f"{'case':<12} {'tags':>6} {'Hz':>4} {'points':>11} {'points/s':>12} {'peak MB':>8}  note"
    )
    failures = []
    for tags, hz, seconds in datasets:
        chain = run_case("chain", tags, hz, seconds)
        ref = run_case("numpy", tags, hz, seconds)
        same = chain["checksum"] == ref["checksum"]
        if not same:
            failures.append((tags, hz))
        rows = [
            (chain, "identical to numpy" if same else "DIFFERS from numpy"),
            (ref, "limit for the chain"),
        ]
        if (tags, hz) == datasets[0][:2]:
            for case, secs in SLOW_REFERENCES.items():
                rows.append((run_case(case, tags, hz, min(seconds, secs)), "per-point reference"))
        for r, note in rows:
            print(
                f"{r['case']:<12} {r['tags']:>6} {r['hz']:>4g} {r['points']:>11,} "
                f"{r['points_per_s']:>12,.0f} {r['peak_rss_mb']:>8.0f}  {note}"
            )
    if not args.quick:
        r = run_case("live_latency", 10_000, 10.0, 190)
        wait = r["allowed_lateness_ms"]
        print(
            f"{'live_latency':<14} {r['tags']:>6} {r['hz']:>4g} {r['points']:>11,} pts  "
            f"{r['points_per_s']:>12,.0f} pts/s {r['peak_rss_mb']:>6.0f} MB  live stream paced "
            f"in wall time: point->sink p50 {r['points_p50_ms']:.0f} ms, p99 "
            f"{r['points_p99_ms']:.0f} ms (incl. up to 100 ms coalescing); "
            f"{r['windows_closed']} 1m windows, end->sink p50 {r['window_close_p50_ms']:.0f} ms, "
            f"max {r['window_close_max_ms']:.0f} ms = {wait} ms allowed lateness + "
            f"{r['window_close_max_ms'] - wait:.0f} ms"
        )
    service_cases(args.quick)
    live_kafka_case(args.quick)
    scale_out_case(args.quick)
    many_sites_case(args.quick)
    history_case(args.quick)
    ingest_cases(args.quick)
    print(f"# total {time.perf_counter() - t0:.0f} s")
    if failures:
        sys.exit(f"chain results differ from the numpy reference for {failures}")


if __name__ == "__main__":
    main()
