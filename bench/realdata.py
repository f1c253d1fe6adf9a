"""Operators on a real recording: aggregates and energy against pandas, anomaly rules against
anomalies injected at known places.

``python -m bench.realdata`` prints one JSON line. The recording is the La Haute Borne wind farm
SCADA history that the ``openoa`` package ships (4 turbines, 10-minute averages, 2014-2015,
with its own gaps, empty cells and repeated times where the clocks went back);
``infra/local/install.sh`` takes it out of the openoa wheel. Everything expected is computed
with pandas and numpy from the CSV, never with edgeflow's classes; edgeflow reads the CSV
through its own file input (``machine_column``: one row per turbine and time).

Injected, each at its own random places (seeded) in turbine R80711's series:

- ``flatline``: the outdoor temperature frozen at its value for 4 h, 10 times;
- ``stale`` (validation): the wind speed frozen for 4 h, 10 times;
- ``outlier``: the wind speed raised by 10 m/s at 40 single samples;
- ``clipping``: the active power held at a 1,200 kW curtailment setpoint (+-3 kW noise) for
  3 h where it was above 1,400 kW, 8 times;
- ``gap``: every column removed for 2 to 8 h, 10 times.

A raised event is a true positive when it falls inside an injected episode (from its first
sample to its last, the gap from the sample before to the sample after); recall counts the
episodes with at least one. The recording's own anomalies (a wind vane stuck for up to 5 h,
its own gaps) count as false positives against the injected labels; the ``gap`` rule is also
scored against every gap in the data, and ``stale`` against every frozen stretch of the wind
speed as well (``gap_all``, ``stale_all``: pandas finds them).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from connectors.files.config import FileInput
from connectors.files.source import read_points
from operators.anomaly.logic import AnomalyDetector, AnomalyRule
from operators.validate.config import ValidateOp
from operators.validate.logic import Validator
from wire.records import PointBatch

__all__ = ["RECORDING", "TURBINE", "aggregate_check", "detection", "inject", "load"]

RECORDING = (
    Path(os.environ.get("EDGEFLOW_INFRA_DIR", "/var/tmp/edgeflow-infra"))
    / "data"
    / "la-haute-borne-data-2014-2015.csv"
)
TURBINE = "R80711"
IDENT = ("laHauteBorne", "farm")
_H = 3_600_000
_SAMPLE = 600_000

RULES = (
    AnomalyRule("frozen-temperature", "flatline", "*/Ot_avg", lookback_ms=2 * _H),
    AnomalyRule(
        "wind-outlier", "outlier", "*/Ws_avg", lookback_ms=3 * _H, threshold=8, min_points=12
    ),
    AnomalyRule("curtailed", "clipping", "*/P_avg", lookback_ms=_H, limit=1_200, tolerance=5),
    AnomalyRule("no-data", "gap", "*/P_avg", lookback_ms=1_800_000),
)
STALE = ValidateOp.model_validate(
    {
        "type": "validate",
        "max_future_ms": None,
        "max_past_ms": None,
        "stale_after_ms": 2 * _H,
        "stale_tags": "*/Ws_avg",
    }
)


def load(path: Path = RECORDING) -> pd.DataFrame:
    """The recording as pandas reads it: UTC times, file order kept within equal times."""
    df = pd.read_csv(path)
    df["t_ms"] = (
        pd.to_datetime(df["Date_time"], utc=True).astype("datetime64[ms, UTC]").astype("int64")
    )
    return df.sort_values("t_ms", kind="stable").reset_index(drop=True)


def inject(
    df: pd.DataFrame, seed: int = 7
) -> tuple[pd.DataFrame, dict[str, list[tuple[int, int]]]]:
    """Return the recording with anomalies injected into TURBINE's rows, and their episodes."""
    rng = np.random.default_rng(seed)
    out = df.copy()
    rows = np.flatnonzero(out["Wind_turbine_name"].to_numpy() == TURBINE)
    t = out["t_ms"].to_numpy()
    used: set[int] = set()  # 200-sample slots taken: episodes never touch each other

    def span(n: int, start: int | None = None) -> np.ndarray[Any, Any]:
        while start is None:
            slot = int(rng.integers(2, len(rows) // 200 - 2))
            if slot not in used:
                start = slot * 200 + int(rng.integers(0, 100))
        used.update({start // 200, (start + n) // 200})
        return rows[start : start + n]

    labels: dict[str, list[tuple[int, int]]] = {k: [] for k in ("flatline", "stale", "outlier")}
    labels |= {"clipping": [], "gap": []}
    for kind, column in (("flatline", "Ot_avg"), ("stale", "Ws_avg")):
        for _ in range(10):
            r = span(24)
            out.loc[r, column] = out.loc[r[0], column]
            labels[kind].append((int(t[r[0]]), int(t[r[-1]])))
    for _ in range(40):
        r = span(1)
        out.loc[r, "Ws_avg"] = out.loc[r, "Ws_avg"] + 10.0
        labels["outlier"].append((int(t[r[0]]), int(t[r[0]])))
    # Curtailment where the turbine made more than 1,400 kW for 3 h on end.
    p = out.loc[rows, "P_avg"].to_numpy()
    strong = pd.Series(p > 1_400).rolling(18).min().to_numpy() == 1
    starts = [i - 17 for i in np.flatnonzero(strong).tolist()]
    for i in rng.permutation(starts).tolist():
        if len(labels["clipping"]) == 8:
            break
        if used.isdisjoint({i // 200, (i + 18) // 200}):
            r = span(18, i)
            out.loc[r, "P_avg"] = 1_200 + rng.uniform(-3, 3, len(r))
            labels["clipping"].append((int(t[r[0]]), int(t[r[-1]])))
    drop: list[int] = []
    for _ in range(10):
        r = span(int(rng.integers(12, 49)))
        labels["gap"].append((int(t[r[0] - 1 - 3]), int(t[r[-1] + 1 + 3])))
        drop += r.tolist()
    return out.drop(index=drop).reset_index(drop=True), labels


def _batches(csv: Path) -> Iterator[PointBatch]:
    cfg = FileInput.model_validate(
        {
            "type": "file",
            "path": str(csv),
            "machine_column": "Wind_turbine_name",
            "time": {"column": "Date_time"},
            "context": {"area": "wind", "line": "wtg"},
            "columns": {
                "P_avg": {"unit": "kW"},
                "Ws_avg": {"unit": "m/s"},
                "Ot_avg": {"unit": "degC"},
            },
        }
    )
    for _pos, items in read_points(cfg, IDENT):
        yield from (it for it in items if isinstance(it, PointBatch))


def _gaps_in(df: pd.DataFrame, column: str, longer_ms: int) -> list[tuple[int, int]]:
    """Every stretch of TURBINE's ``column`` without a sample for more than ``longer_ms``."""
    s = df[(df["Wind_turbine_name"] == TURBINE) & df[column].notna()]["t_ms"].to_numpy()
    s = np.unique(s)
    at = np.flatnonzero(np.diff(s) > longer_ms)
    return [(int(s[i]), int(s[i + 1])) for i in at]


def _score(raised: list[int], episodes: list[tuple[int, int]]) -> dict[str, float | int]:
    hit = [any(a <= t <= b for a, b in episodes) for t in raised]
    found = [any(a <= t <= b for t in raised) for a, b in episodes]
    return {
        "episodes": len(episodes),
        "events": len(raised),
        "precision": round(sum(hit) / len(hit), 3) if hit else 0.0,
        "recall": round(sum(found) / len(found), 3) if found else 0.0,
    }


def detection(seed: int = 7) -> dict[str, Any]:
    """Precision and recall of each rule on the injected recording."""
    data, labels = inject(load(), seed)
    with tempfile.TemporaryDirectory() as tmp:
        csv = Path(tmp) / "injected.csv"
        data.drop(columns=["t_ms"]).to_csv(csv, index=False)
        det = AnomalyDetector(RULES)
        val = Validator(STALE)
        raised: dict[str, list[int]] = {}
        for batch in _batches(csv):
            res = val.process(batch)
            for ref, ts in res.newly_stale:
                if f"/{TURBINE}/" in ref.path:
                    raised.setdefault("stale", []).append(ts)
            for e in det.process(batch):
                if e.state == "raised" and f"/{TURBINE}/" in e.path:
                    raised.setdefault(e.details["kind"], []).append(e.ts_ms)
    out = {k: _score(raised.get(k, []), labels[k]) for k in labels}
    out["gap_all"] = _score(raised.get("gap", []), _gaps_in(data, "P_avg", 1_800_000))
    frozen = _frozen(data, "Ws_avg", STALE.stale_after_ms or 0)
    out["stale_all"] = _score(raised.get("stale", []), frozen)
    return out


def _frozen(df: pd.DataFrame, column: str, for_ms: int) -> list[tuple[int, int]]:
    """Every run of exactly equal values of TURBINE's ``column`` lasting ``for_ms`` or more."""
    d = df[(df["Wind_turbine_name"] == TURBINE) & df[column].notna()]
    t, v = d["t_ms"].to_numpy(), d[column].to_numpy()
    new = np.r_[True, v[1:] != v[:-1]]
    first = np.flatnonzero(new)
    last = np.r_[first[1:], len(v)] - 1
    return [
        (int(t[a]), int(t[b])) for a, b in zip(first, last, strict=True) if t[b] - t[a] >= for_ms
    ]


def aggregate_check() -> dict[str, Any]:
    """Hourly aggregates and energy of every turbine through edgeflow, against pandas."""
    from operators.aggregate.logic import TumblingAggregator

    df = load()
    agg = TumblingAggregator(
        window_ms=_H, rollup_ms=(86_400_000,), idle_close=False, zone="Europe/Paris"
    )
    rows: list[dict[str, Any]] = []
    for batch in _batches(RECORDING):
        windows, _late = agg.add(batch, 0)
        rows += [r for w in windows for r in w.rows()]
    rows += [r for w in agg.flush() for r in w.rows()]
    ours = pd.DataFrame(rows)
    hourly = ours[(ours["window_ms"] == _H) & ours["path"].str.endswith("/P_avg")]
    worst = 0.0
    energy = {}
    for turbine, d in df.groupby("Wind_turbine_name", sort=True):
        d = d[d["P_avg"].notna()]
        ref = d.groupby(d["t_ms"] // _H * _H)["P_avg"].agg(["count", "mean", "min", "max"])
        got = hourly[hourly["path"].str.contains(f"/{turbine}/")].set_index("start_ms")
        got = got.loc[ref.index]
        assert (got["count"].to_numpy() == ref["count"].to_numpy()).all()
        for c in ("mean", "min", "max"):
            rel = np.abs(got[c].to_numpy() - ref[c].to_numpy()) / np.maximum(
                np.abs(ref[c].to_numpy()), 1.0
            )
            worst = max(worst, float(rel.max()))
        # The trapezoid over the whole series, segments up to an hour (the gap rule), in kWh.
        t, p = d["t_ms"].to_numpy(), d["P_avg"].to_numpy()
        dt = np.diff(t)
        seg = np.where(dt <= _H, (p[1:] + p[:-1]) / 2 * dt, 0.0).sum() / _H
        days = ours[
            (ours["window_ms"] == 86_400_000) & (ours["path"].str.contains(f"/{turbine}/P_avg"))
        ]
        energy[str(turbine)] = {
            "trapezoid_kwh": seg,
            "hourly_sum_kwh": float(got["energy"].sum()),
            "daily_sum_kwh": float(days["energy"].sum()),
            "days": len(days),
            # Local days when the clocks change (Europe/Paris): 23 h and 25 h long.
            "hours_of": {
                d: float((r["end_ms"] - r["start_ms"]) / _H)
                for d in ("2014-03-30", "2014-10-26", "2014-06-01")
                for r in days[days["start_local"].str.startswith(d)].to_dict("records")
            },
        }
    return {"worst_relative_error": worst, "energy": energy}


def percentile_check() -> dict[str, Any]:
    """Hourly and daily p50/p95/p99 of every turbine's power through edgeflow, against pandas."""
    from operators.percentiles.logic import PercentileWindows, quantile_name

    qs = (0.5, 0.95, 0.99)
    pw = PercentileWindows(
        tags="*/P_avg", window_ms=_H, rollup_ms=(86_400_000,), quantiles=qs, allowed_lateness_ms=0
    )
    rows = []
    for batch in _batches(RECORDING):
        rows += pw.process(batch)[0]
    rows += pw.flush()
    ours = {(k.path.split("/")[-2], k.name, k.window_ms, k.start_ms): k.value for k in rows}
    df = load()
    worst, compared = 0.0, 0
    for size in (_H, 86_400_000):
        d = df[df["P_avg"].notna()]
        ref = d.groupby(["Wind_turbine_name", d["t_ms"] // size * size])["P_avg"].quantile(qs)
        for (turbine, start, q), want in ref.items():
            got = ours[(str(turbine), quantile_name(q), size, int(start))]
            worst = max(worst, abs(got - want) / max(abs(want), 1.0))
            compared += 1
    return {"worst_relative_error": worst, "compared": compared, "rows": len(ours)}


def main() -> None:
    print(
        json.dumps(
            {
                "aggregates": aggregate_check(),
                "percentiles": percentile_check(),
                "detection": detection(),
            }
        )
    )


if __name__ == "__main__":
    main()
