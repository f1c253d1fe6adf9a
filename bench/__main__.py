"""Benchmark suite: ``python -m bench [--quick]`` prints a table of points/s and peak RSS.

Each case runs in a fresh process on the same generated data (1% invalid, 1% late points):

- ``chain``: the operator chain in a Bytewax flow on one worker (validate -> 1m/15m
  aggregates -> four anomaly rules -> alarm -> ONNX on 1m features);
- ``numpy``: the same validation and aggregates in numpy without a dataflow (the limit);
- ``python``: a plain per-point Python loop (count/sum/min/max only);
- ``fold_window``: plain per-point Bytewax ``fold_window`` at 1m and 15m (count/sum/min/max).

The chain's aggregates must equal the numpy reference (row counts, point counts, sums).
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
    print(f"# total {time.perf_counter() - t0:.0f} s")
    if failures:
        sys.exit(f"chain results differ from the numpy reference for {failures}")


if __name__ == "__main__":
    main()
