"""Percentiles per tag and window, against numpy.quantile on the same values."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from operators.errors import RuleError
from operators.percentiles.logic import PercentileWindows, grouped_quantiles, quantile_name
from tests.unit.points import batch_at
from wire.records import TagRef

T0 = 1_780_304_400_000  # on a 15-minute boundary
A, B = TagRef("acme/s1/pv/a1/inv-01/ac_power", "kW"), TagRef("acme/s1/pv/a1/inv-02/ac_power", "kW")
QS = (0.5, 0.95, 0.99)


def batch(rows):
    return batch_at(T0, rows)


def rows_of(kpis):
    return {(k.path, k.name, k.window_ms, k.start_ms - T0): k.value for k in kpis}


@pytest.mark.parametrize(
    ("q", "name"), [(0.5, "p50"), (0.95, "p95"), (0.99, "p99"), (0.999, "p99.9")]
)
def test_quantile_names(q, name):
    assert quantile_name(q) == name


def test_grouped_quantiles_equal_numpy_per_group():
    rng = np.random.default_rng(1)
    group = rng.integers(0, 50, 5000)
    value = rng.gamma(2.0, 10.0, 5000)
    ids, q = grouped_quantiles(group, value, (0.0, 0.25, 0.5, 0.95, 0.99, 1.0))
    for k, g in enumerate(ids.tolist()):
        want = np.quantile(value[group == g], (0.0, 0.25, 0.5, 0.95, 0.99, 1.0))
        assert q[k] == pytest.approx(want, rel=1e-12, abs=1e-12)


def _series(rng, n):
    # 1 Hz for n seconds, two tags, with a few points up to 3 s out of order.
    rows = [
        (tag, k * 1000, float(v))
        for k in range(n)
        for tag, v in ((A, rng.normal(50, 10)), (B, rng.gamma(2, 5)))
    ]
    for i in rng.choice(len(rows) - 10, 40, replace=False):
        rows[i], rows[i + 4] = rows[i + 4], rows[i]  # B's or A's point 2 s later comes first
    return rows


def test_rows_equal_pandas_for_every_window_and_rollup():
    rng = np.random.default_rng(2)
    rows = _series(rng, 1800)
    pw = PercentileWindows(
        window_ms=60_000, rollup_ms=(900_000,), quantiles=QS, allowed_lateness_ms=5000
    )
    got, late = pw.process(batch(rows))
    got = rows_of(got + pw.flush())
    assert not len(late)
    df = pd.DataFrame(
        {"path": [r[0].path for r in rows], "t": [r[1] for r in rows], "v": [r[2] for r in rows]}
    )
    for size in (60_000, 900_000):
        df["w"] = df["t"] // size * size
        q = df.groupby(["path", "w"])["v"].quantile(list(QS))
        for (path, w, qq), v in q.items():
            assert got[(path, quantile_name(qq), size, w)] == pytest.approx(v, rel=1e-12)
    assert len(got) == 2 * 3 * (30 + 2)


def test_the_same_rows_and_late_points_for_any_batching():
    rng = np.random.default_rng(3)
    rows = _series(rng, 900)
    rows.insert(1500, (A, 100_000, 999.0))  # 10+ minutes after its window closed: late

    def run(pieces):
        pw = PercentileWindows(quantiles=QS)
        out, late = [], []
        for p in pieces:
            r, lt = pw.process(batch(p))
            out += r
            late += [
                (lt.tags[i].path, int(t))
                for i, t in zip(lt.tag_idx.tolist(), lt.ts_ms.tolist(), strict=False)
            ]
        return rows_of(out + pw.flush()), late

    want = run([rows])
    assert want[1] == [(A.path, T0 + 100_000)]
    for _ in range(5):
        cuts = np.sort(rng.choice(np.arange(1, len(rows)), 60, replace=False))
        got = run([rows[a:b] for a, b in zip(np.r_[0, cuts], np.r_[cuts, len(rows)], strict=False)])
        assert got == want


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"rollup_ms": (90_000,)}, "multiple"),
        ({"quantiles": (1.5,)}, "between 0 and 1"),
        ({"quantiles": ()}, "between 0 and 1"),
        ({"allowed_lateness_ms": -1}, ">= 0"),
    ],
)
def test_invalid_settings(kw, match):
    with pytest.raises(RuleError, match=match):
        PercentileWindows(**kw)
