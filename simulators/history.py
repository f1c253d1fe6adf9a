"""``edgeflow sim history``: write days of the demo site as a CSV or Parquet history file.

The file is what a plant historian export looks like: a ``time`` column (ISO 8601 UTC) and one
column per tag, named ``area/line/machine/tag [unit]`` so the ``file`` input places each tag without
a mapping. Faults are injected at fixed times (see ``--help``), so a backtest of the file has
anomalies and alarms to find.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from simulators.site import EnergySite, Fault, SiteLayout
from wire.records import to_ms

__all__ = ["DEFAULT_FAULTS", "main", "write_history"]

# One fault of each visible kind on the first day (seconds after the start), then daily.
DEFAULT_FAULTS: tuple[tuple[str, str, float, float], ...] = (
    ("over_temp", "inv-01", 11 * 3600, 1800),
    ("power_spike", "panel-01", 14 * 3600, 900),
    ("voltage_sag", "meter-01", 16 * 3600, 600),
    ("soc_drop", "bess-01", 19 * 3600, 600),
)


def write_history(
    out: Path, *, start_ms: int, days: float, interval_s: float, seed: int = 7
) -> int:
    """Write the history file (format by suffix); return the number of points written."""
    n_days = max(1, int(np.ceil(days)))
    faults = tuple(
        Fault(kind, asset, start + day * 86_400, duration)  # type: ignore[arg-type]
        for day in range(n_days)
        for kind, asset, start, duration in DEFAULT_FAULTS
    )
    site = EnergySite(
        layout=SiteLayout(),
        start_ms=start_ms,
        interval_ms=int(interval_s * 1000),
        seed=seed,
        faults=faults,
    )
    ticks = int(days * 86_400 / interval_s)
    names = [
        "/".join(t.path.split("/")[2:]) + (f" [{t.unit}]" if t.unit else "") for t in site.tags
    ]
    columns: dict[str, list[np.typing.NDArray[np.float64]]] = {n: [] for n in names}
    times: list[np.typing.NDArray[np.int64]] = []
    done = 0
    while done < ticks:
        step = min(10_000, ticks - done)
        batch = site.step(step)
        grid = batch.value.reshape(step, len(names))
        times.append(batch.ts_ms.reshape(step, len(names))[:, 0])
        for j, n in enumerate(names):
            columns[n].append(grid[:, j])
        done += step
    ts = np.concatenate(times) if times else np.empty(0, np.int64)
    table = pa.table(
        {
            "time": pa.array(ts, pa.timestamp("ms", "UTC")),
            **{n: pa.array(np.concatenate(v) if v else np.empty(0)) for n, v in columns.items()},
        }
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() in (".parquet", ".pq"):
        pq.write_table(table, out)
    else:
        pacsv.write_csv(table, out)
    return ticks * len(names)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(prog="edgeflow sim history", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("history.csv"), help=".csv or .parquet")
    p.add_argument("--start", default="2026-06-01T00:00:00Z", help="ISO 8601 with offset")
    p.add_argument("--days", type=float, default=3.0)
    p.add_argument("--interval-s", type=float, default=60.0)
    p.add_argument("--seed", type=int, default=7)
    a = p.parse_args(argv)
    n = write_history(a.out, start_ms=to_ms(a.start), days=a.days, interval_s=a.interval_s)
    print(f"{a.out}: {n:,} points, {a.days:g} days from {a.start} every {a.interval_s:g} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
