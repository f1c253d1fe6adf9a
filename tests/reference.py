"""An independent, deliberately naive computation of window aggregates (plain Python).

Used by tests as the oracle for the columnar aggregator: no numpy, no shared code.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from collections.abc import Iterable

POWER = {"W", "kW", "MW", "VA", "kVA"}


def reference_aggregates(
    points: Iterable[tuple[str, str, int, float]], window_ms: int, max_gap_ms: int | None = None
) -> dict[tuple[str, int], dict[str, float]]:
    """``points`` are (path, unit, ts_ms, value) in arrival order -> {(path, start): stats}.

    Energy and the time-weighted mean follow the documented definition: the tag's points,
    sorted by time, joined by straight lines wherever consecutive points are at most
    ``max_gap_ms`` apart (default: the window); each window gets the integral of that line
    over its own span, segment by segment, split at the window bounds.
    """
    gap = window_ms if max_gap_ms is None else max_gap_ms
    groups: dict[tuple[str, int], list[tuple[int, int, float]]] = defaultdict(list)
    series: dict[str, list[tuple[int, int, float]]] = defaultdict(list)
    units: dict[str, str] = {}
    for seq, (path, unit, ts, value) in enumerate(points):
        groups[(path, ts - ts % window_ms)].append((ts, seq, value))
        series[path].append((ts, seq, value))
        units[path] = unit
    integral: dict[tuple[str, int], float] = defaultdict(float)
    covered: dict[tuple[str, int], int] = defaultdict(int)
    for path, rows in series.items():
        rows.sort()
        for (t0, _, v0), (t1, _, v1) in itertools.pairwise(rows):
            if not 0 < t1 - t0 <= gap:
                continue
            w = t0 - t0 % window_ms
            while w < t1:  # every window the segment crosses
                a, b = max(t0, w), min(t1, w + window_ms)
                if b > a:
                    va = v0 + (v1 - v0) * (a - t0) / (t1 - t0)
                    vb = v0 + (v1 - v0) * (b - t0) / (t1 - t0)
                    integral[(path, w)] += (va + vb) / 2 * (b - a)
                    covered[(path, w)] += b - a
                w += window_ms
    out = {}
    for key, rows in groups.items():
        rows.sort()
        vals = [v for _, _, v in rows]
        n = len(vals)
        mean = math.fsum(vals) / n
        area, span = integral.get(key, 0.0), covered.get(key, 0)
        out[key] = {
            "count": n,
            "min": min(vals),
            "max": max(vals),
            "sum": math.fsum(vals),
            "mean": mean,
            "std": math.sqrt(math.fsum((v - mean) ** 2 for v in vals) / n),
            "first": vals[0],
            "last": vals[-1],
            "twa": area / span if span > 0 else mean,
            "energy": area / 3_600_000 if units[key[0]] in POWER else None,
        }
    return out


def assert_rows_match(rows: list[dict], ref: dict, *, rel: float = 1e-9) -> None:
    """Every reference window has exactly one row with the same figures, and vice versa."""
    got = {(r["path"], r["start_ms"]): r for r in rows}
    assert len(got) == len(rows), "duplicate window rows"
    assert set(got) == set(ref), (
        f"windows differ: missing {sorted(set(ref) - set(got))[:3]}, "
        f"extra {sorted(set(got) - set(ref))[:3]}"
    )
    for key, want in ref.items():
        row = got[key]
        for stat, value in want.items():
            if value is None:
                assert row[stat] is None, (key, stat)
            elif stat == "count":
                assert row[stat] == value, (key, stat)
            else:
                assert math.isclose(row[stat], value, rel_tol=rel, abs_tol=1e-9), (
                    key,
                    stat,
                    row[stat],
                    value,
                )
