import itertools

import numpy as np
import pytest

from operators.aggregate.logic import TumblingAggregator, combine, summarize
from operators.errors import RuleError
from tests.reference import assert_rows_match, reference_aggregates
from wire.records import PointBatch, TagRef, window_label

P = TagRef("e/s/a/l/m/power", "kW")
T = TagRef("e/s/a/l/m/temp", "C")


def batch(rows, received_ms=0):
    """rows: (tag, ts_ms, value)."""
    tags = tuple(dict.fromkeys(r[0] for r in rows))
    return PointBatch(
        tags,
        [tags.index(r[0]) for r in rows],
        [r[1] for r in rows],
        [r[2] for r in rows],
        [0] * len(rows),
        received_ms=received_ms,
    )


def rows_of(windows, window_ms):
    return [r for w in windows if w.window_ms == window_ms for r in w.rows()]


@pytest.mark.parametrize(
    ("ms", "label"),
    [(60_000, "1m"), (900_000, "15m"), (3_600_000, "1h"), (30_000, "30s"), (1500, "1500ms")],
)
def test_window_label(ms, label):
    assert window_label(ms) == label


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"window_ms": 0}, "positive"),
        ({"rollup_ms": (90_000,)}, "multiple"),
        ({"rollup_ms": (60_000,)}, "multiple"),
        ({"allowed_lateness_ms": -1}, ">= 0"),
    ],
)
def test_bad_parameters(kwargs, match):
    with pytest.raises(RuleError, match=match):
        TumblingAggregator(**kwargs)


# Table: points (tag, ts, value) -> expected 1m stats of the power tag in window 0.
CASES = [
    pytest.param(
        [(P, 0, 10.0)], {"count": 1, "mean": 10.0, "twa": 10.0, "energy": 0.0}, id="single"
    ),
    pytest.param(
        [(P, 0, 0.0), (P, 30_000, 60.0)],
        {"count": 2, "mean": 30.0, "twa": 30.0, "energy": 0.25, "first": 0.0, "last": 60.0},
        id="trapezoid",
    ),
    pytest.param(
        [(P, 30_000, 60.0), (P, 0, 0.0)],
        {"first": 0.0, "last": 60.0, "energy": 0.25},
        id="out-of-order",
    ),
    pytest.param(
        [(P, 0, 10.0), (P, 10_000, 10.0), (P, 50_000, 40.0)],
        {"min": 10.0, "max": 40.0, "sum": 60.0, "mean": 20.0, "twa": (10 * 10 + 25 * 40) / 50},
        id="time-weighted",
    ),
    pytest.param([(P, 0, 1.0), (P, 0, 3.0)], {"std": 1.0, "twa": 2.0}, id="same-instant"),
]


@pytest.mark.parametrize(("points", "expected"), CASES)
def test_one_minute_stats(points, expected):
    agg = TumblingAggregator(rollup_ms=())
    agg.add(batch(points), 0)
    (row,) = rows_of(agg.flush(), 60_000)
    for stat, value in expected.items():
        assert row[stat] == pytest.approx(value), stat


def test_non_power_units_have_no_energy():
    agg = TumblingAggregator(rollup_ms=())
    agg.add(batch([(T, 0, 20.0), (T, 1000, 21.0)]), 0)
    (row,) = rows_of(agg.flush(), 60_000)
    assert row["energy"] is None and row["unit"] == "C"


def random_stream(seed, n=5000, tags=(P, T), span_ms=3_600_000, shuffle_ms=20_000):
    rng = np.random.default_rng(seed)
    ts = np.sort(rng.integers(0, span_ms, n))
    jitter = rng.integers(0, shuffle_ms, n)  # arrival order differs from event order
    order = np.argsort(ts + jitter, kind="stable")
    tag = rng.integers(0, len(tags), n)
    value = rng.normal(50, 20, n).round(3)
    return [(tags[tag[i]], int(ts[i]), float(value[i])) for i in order]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_equals_reference_on_disordered_stream(seed):
    pts = random_stream(seed)
    agg = TumblingAggregator(allowed_lateness_ms=30_000, idle_close=False)
    out, lates = [], []
    for i in range(0, len(pts), 97):
        w, late = agg.add(batch(pts[i : i + 97]), 0)
        out += w
        lates.append(late)
    out += agg.flush()
    assert sum(len(x) for x in lates) == 0  # lateness covers the jitter
    flat = [(r[0].path, r[0].unit, r[1], r[2]) for r in pts]
    assert_rows_match(rows_of(out, 60_000), reference_aggregates(flat, 60_000))
    assert_rows_match(rows_of(out, 900_000), reference_aggregates(flat, 900_000))


def test_late_points_are_returned_not_aggregated():
    agg = TumblingAggregator(rollup_ms=(), allowed_lateness_ms=1000, idle_close=False)
    agg.add(batch([(P, 0, 1.0), (P, 59_000, 2.0)]), 0)
    # The watermark (60.5 s) has passed window 0, but an on-time point could still come
    # before 61.5 s, the point its tail leads to: it waits until that point is final.
    closed, late = agg.add(batch([(P, 61_500, 3.0)]), 0)
    assert closed == []
    closed, late = agg.add(batch([(P, 30_000, 99.0), (P, 62_500, 4.0)]), 0)
    assert [w.start_ms for w in closed] == [0]
    assert late.ts_ms.tolist() == [30_000] and late.value.tolist() == [99.0]
    assert agg.points_late == 1 and agg.points_in == 5
    (row,) = rows_of(agg.flush(), 60_000)
    assert row["count"] == 2 and row["closed_by"] == "eof"


def test_idle_windows_close_by_wall_time():
    agg = TumblingAggregator(rollup_ms=(), allowed_lateness_ms=5000, idle_close=True)
    assert agg.add(batch([(P, 10_000, 1.0)]), now_wall_ms=1_000_000)[0] == []
    assert agg.next_close_wall_ms() == 1_000_000 + 55_000
    # Due at 55 s, but the tag may still send the point after 10 s: held until the watermark
    # passes 10 s + max_gap_ms (60 s), 65 s of wall time after the point.
    assert agg.advance(1_000_000 + 55_000) == []
    assert agg.next_close_wall_ms() == 1_000_000 + 65_000
    assert agg.advance(1_000_000 + 64_999) == []
    (w,) = agg.advance(1_000_000 + 65_000)
    assert w.start_ms == 0 and w.closed_by == "watermark"


def test_without_idle_close_wall_time_does_nothing():
    agg = TumblingAggregator(rollup_ms=(), idle_close=False)
    agg.add(batch([(P, 10_000, 1.0)]), 0)
    assert agg.advance(10**12) == [] and agg.next_close_wall_ms() is None


def test_rollup_emitted_after_its_last_base_window():
    agg = TumblingAggregator(window_ms=60_000, rollup_ms=(180_000,), idle_close=False)
    closed = []
    for minute in range(7):
        closed += agg.add(batch([(P, minute * 60_000 + 1, float(minute))]), 0)[0]
    labels = [(w.label, w.start_ms) for w in closed]
    assert labels == [
        ("1m", 0),
        ("1m", 60_000),
        ("1m", 120_000),
        ("3m", 0),
        ("1m", 180_000),
        ("1m", 240_000),
        ("1m", 300_000),
        ("3m", 180_000),
    ]
    three = next(w for w in closed if w.label == "3m" and w.start_ms == 0)
    assert three.count.tolist() == [3] and three.mean.tolist() == [1.0]


def test_combine_equals_direct_summary():
    rng = np.random.default_rng(7)
    g = rng.integers(0, 4, 600).astype(np.int32)
    t = rng.integers(0, 600_000, 600)
    v = rng.normal(size=600)
    whole = summarize(g, t, v)
    parts = [
        summarize(g[t // 60_000 == k], t[t // 60_000 == k], v[t // 60_000 == k]) for k in range(10)
    ]
    both = combine(parts)
    for f in whole.__slots__:
        np.testing.assert_allclose(getattr(both, f), getattr(whole, f), rtol=1e-12, atol=1e-9)


def _all_rows(agg, pts, size):
    out = []
    for i in range(0, len(pts), size):
        out += agg.add(batch(pts[i : i + size]), 0)[0]
    out += agg.flush()
    return sorted(
        (r["path"], r["window_ms"], r["start_ms"], r["revision"], tuple(sorted(r.items())))
        for w in out
        for r in w.rows()
    )


@pytest.mark.parametrize("seed", [1, 2])
def test_results_are_bit_identical_for_any_batching(seed):
    pts = random_stream(seed)
    rows = {
        size: _all_rows(TumblingAggregator(allowed_lateness_ms=30_000, idle_close=False), pts, size)
        for size in (1, 13, 97, len(pts))
    }
    assert rows[13] == rows[1] and rows[97] == rows[1] and rows[len(pts)] == rows[1]


def test_slices_do_not_change_the_definition_of_a_window():
    pts = random_stream(3)
    flat = [(r[0].path, r[0].unit, r[1], r[2]) for r in pts]
    for slice_ms in (5_000, 20_000, 60_000):
        agg = TumblingAggregator(allowed_lateness_ms=30_000, idle_close=False, slice_ms=slice_ms)
        out = []
        for i in range(0, len(pts), 50):
            out += agg.add(batch(pts[i : i + 50]), 0)[0]
        out += agg.flush()
        assert_rows_match(rows_of(out, 60_000), reference_aggregates(flat, 60_000))


def test_reopened_window_equals_a_window_that_got_the_point_in_time():
    # P passes window 0's end + lateness before it closes; T lags and may still reopen it.
    # (P runs on to 96 s: window 0 waits until the watermark passes T's last point by
    # max_gap_ms, as T might still send the point its tail leads to.)
    early = [(P, 1_000 * k, float(k)) for k in range(0, 97)] + [(T, 1_000, 5.0), (T, 30_000, 6.0)]
    straggler = [(T, 45_000, 7.0)]
    agg = TumblingAggregator(rollup_ms=(), allowed_lateness_ms=5_000, idle_close=False)
    closed, _ = agg.add(batch(early), 0)
    assert [w.start_ms for w in closed] == [0]
    (w0,) = agg._closed.values()
    raw_left = {int(g) for sl in w0.slices.values() for part in sl.gid for g in part}
    assert raw_left == {agg._reg.id(T)}  # P passed the window: its raw points are released
    reopened, late = agg.add(batch(straggler), 0)
    assert len(late) == 0 and [(w.start_ms, w.revision) for w in reopened] == [(0, 1)]
    again = TumblingAggregator(rollup_ms=(), allowed_lateness_ms=5_000, idle_close=False)
    both = again.add(batch(early + straggler), 0)[0] + again.flush()
    (direct,) = [w for w in both if w.start_ms == 0]
    got = {r["path"]: r for r in reopened[0].rows()}
    for r in direct.rows():
        assert {k: v for k, v in got[r["path"]].items() if k not in ("revision", "closed_by")} == {
            k: v for k, v in r.items() if k not in ("revision", "closed_by")
        }


def test_snapshot_copy_is_independent_and_shares_buffered_arrays():
    import copy
    import pickle

    agg = TumblingAggregator(allowed_lateness_ms=0, idle_close=False)
    agg.add(batch([(P, 1_000, 1.0), (T, 2_000, 2.0)]), 0)
    snap = copy.deepcopy(agg)
    (w_live,), (w_snap,) = agg._open.values(), snap._open.values()
    (s_live,), (s_snap,) = w_live.slices.values(), w_snap.slices.values()
    assert s_live.ts[0] is s_snap.ts[0]  # points are not copied
    agg.add(batch([(P, 3_000, 3.0), (P, 70_000, 4.0)]), 0)  # grows and closes the live state
    restored = pickle.loads(pickle.dumps(snap))
    (row_p, row_t) = sorted(
        (r for w in restored.flush() for r in w.rows() if r["window_ms"] == 60_000),
        key=lambda r: r["path"],
    )
    assert (row_p["count"], row_p["sum"], row_t["count"]) == (1, 1.0, 1)


def test_window_closed_by_wall_time_releases_raw_points_once_tags_move_on():
    agg = TumblingAggregator(rollup_ms=(), allowed_lateness_ms=5_000, idle_close=True)
    agg.add(batch([(P, 1_000 * k, 1.0) for k in range(60)] + [(T, 30_000, 2.0)]), 0)
    # Idle wall time closes it, once the watermark has also passed the tags' last points by
    # max_gap_ms (no point after them is expected any more): 59 s - 5 s + 65 s >= 59 s + 60 s.
    assert agg.advance(64_999) == []
    assert [w.start_ms for w in agg.advance(65_000)] == [0]

    def held():
        (w0,) = agg._closed.values()
        return {int(g) for sl in w0.slices.values() for part in sl.gid for g in part}

    assert held() == {agg._reg.id(P), agg._reg.id(T)}  # neither tag passed 65 s yet
    # P's next point came after all, 7 s after its last: window 0 gets P's tail (revision 1).
    tail, _ = agg.add(batch([(P, 66_000, 3.0)]), 65_000)
    assert [(w.start_ms, w.revision) for w in tail] == [(0, 1)]
    assert held() == {agg._reg.id(T)}  # P can no longer reopen window 0
    reopened, late = agg.add(batch([(T, 40_000, 4.0)]), 65_000)
    assert len(late) == 0
    (row_t,) = [r for r in reopened[0].rows() if r["path"] == T.path]
    assert row_t["count"] == 2 and row_t["revision"] == 2


def _same_bits(a, b):
    for f in a.__slots__:
        x, y = getattr(a, f), getattr(b, f)
        assert x.dtype == y.dtype and x.tobytes() == y.tobytes(), f


@pytest.mark.parametrize("seed", [3, 4])
def test_bulk_summaries_are_bit_identical_to_one_at_a_time(seed):
    """The history fast path (one sort for thousands of slices and windows) must give the
    very bits of summarising each slice and combining them, or digests would depend on
    how a replay was batched."""
    from operators.aggregate.logic import _window_summaries, combine_many, summarize_many

    rng = np.random.default_rng(seed)
    windows = []
    for _ in range(7):
        slices = []
        for _ in range(int(rng.integers(1, 6))):
            n = int(rng.integers(0, 40))
            g = rng.integers(0, 5, n).astype(np.int32)
            t = rng.integers(0, 60_000, n).astype(np.int64)  # duplicates: ties keep input order
            v = rng.normal(100, 30, n)
            slices.append((g, t, v))
        windows.append(slices)
    flat = [sl for w in windows for sl in w]
    for one, many in zip([summarize(*sl) for sl in flat], summarize_many(flat), strict=True):
        _same_bits(one, many)
    per_window = [[summarize(*sl) for sl in w] for w in windows]
    for one, many in zip([combine(p) for p in per_window], combine_many(per_window), strict=True):
        _same_bits(one, many)
    # The fast path takes each window's points at once, with the start of each one's slice.
    flat_windows = [
        tuple(
            np.concatenate(c)
            for c in zip(
                *(
                    (np.full(len(g), 1_000 * j + 10 * k, np.int64), g, t, v)
                    for k, (g, t, v) in enumerate(w)
                ),
                strict=True,
            )
        )
        for j, w in enumerate(windows)
    ]
    bulk = _window_summaries(flat_windows)  # type: ignore[arg-type]
    for one, b in zip([combine(p) for p in per_window], bulk, strict=True):
        _same_bits(one, b)


def test_daily_rollups_follow_local_midnight_through_both_clock_changes():
    """A site in Berlin: days of 24, 23 (29 March) and 25 hours (25 October), each starting at
    local midnight, labelled in local time, made of exactly their base windows. Expected
    midnights come from zoneinfo, not from the code under test."""
    from datetime import datetime, timedelta
    from zoneinfo import ZoneInfo

    berlin = ZoneInfo("Europe/Berlin")
    cases = (
        ((2026, 3, 28), [24, 23, 24], ["+01:00", "+01:00", "+02:00"]),
        ((2026, 10, 24), [24, 25, 24], ["+02:00", "+02:00", "+01:00"]),
    )
    for first_day, hours, offsets in cases:
        midnights = [datetime(*first_day, tzinfo=berlin)]
        for _ in range(3):
            d = midnights[-1].date() + timedelta(days=1)
            midnights.append(datetime(d.year, d.month, d.day, tzinfo=berlin))
        start = int(midnights[0].timestamp() * 1000)
        end = int(midnights[-1].timestamp() * 1000)
        ts = np.arange(start, end, 900_000)  # every 15 min, UTC-regular
        agg = TumblingAggregator(
            window_ms=3_600_000, rollup_ms=(86_400_000,), idle_close=False, zone="Europe/Berlin"
        )
        ref = TagRef("e/s/a/l/m/power", "kW")
        n = len(ts)
        b = PointBatch((ref,), np.zeros(n, np.int32), ts, np.ones(n), np.zeros(n, np.uint8))
        out = agg.add(b, 0)[0] + agg.flush()
        days = sorted((w for w in out if w.window_ms == 86_400_000), key=lambda w: w.start_ms)
        hourly = [w for w in out if w.window_ms == 3_600_000]
        assert [w.start_ms for w in days] == [int(m.timestamp() * 1000) for m in midnights[:3]]
        rows = [w.rows()[0] for w in days]
        assert [(r["end_ms"] - r["start_ms"]) // 3_600_000 for r in rows] == hours
        assert [r["count"] for r in rows] == [4 * h for h in hours]
        assert [r["start_local"][11:] for r in rows] == [f"00:00:00{o}" for o in offsets]
        assert all(r["end_local"][11:19] == "00:00:00" for r in rows)
        for r in rows:
            inside = [w for w in hourly if r["start_ms"] <= w.start_ms < r["end_ms"]]
            assert len(inside) == (r["end_ms"] - r["start_ms"]) // 3_600_000
            assert sum(int(w.count.sum()) for w in inside) == r["count"]


def test_whole_day_base_windows_cannot_follow_a_zone():
    with pytest.raises(RuleError, match="whole days cannot follow"):
        TumblingAggregator(window_ms=86_400_000, rollup_ms=(172_800_000,), zone="Europe/Berlin")
    with pytest.raises(RuleError, match="does not divide the UTC offset"):
        TumblingAggregator(window_ms=3_600_000, rollup_ms=(86_400_000,), zone="Asia/Kolkata")


def test_end_of_input_emits_the_rollup_of_a_window_still_open():
    """Input ending one point into a new 15-minute period: that period's rollup is emitted at
    the end too (it used to be lost: it did not exist until its base window closed)."""
    ref = TagRef("e/s/a/l/m/power", "kW")
    t0 = 1_780_272_000_000
    ts = np.array([t0 + 60_000, t0 + 900_000 + 10_000])
    agg = TumblingAggregator(window_ms=60_000, rollup_ms=(900_000,), idle_close=False)
    b = PointBatch((ref,), np.zeros(2, np.int32), ts, np.array([1.0, 2.0]), np.zeros(2, np.uint8))
    out = agg.add(b, 0)[0] + agg.flush()
    assert sorted((w.window_ms, w.start_ms - t0) for w in out) == [
        (60_000, 60_000),
        (60_000, 900_000),
        (900_000, 0),
        (900_000, 900_000),
    ]


@pytest.mark.parametrize(
    ("interval_ms", "jitter_ms"),
    [(1000, 0), (7000, 0), (60_000, 0), (45_000, 9_000), (59_900, 0), (13_000, 6_000)],
)
@pytest.mark.parametrize("seed", [1, 2])
def test_energy_adds_up_across_windows_and_to_the_trapezoid(interval_ms, jitter_ms, seed):
    """1-minute energies sum to the 15-minute, hourly and daily ones and to numpy's trapezoid
    over the whole series (the oracle), for any sampling including one sample per window,
    whatever the batching."""
    rng = np.random.default_rng(seed)
    n = int(2 * 86_400_000 / interval_ms)
    steps = (
        interval_ms + rng.integers(-jitter_ms, jitter_ms + 1, n)
        if jitter_ms
        else np.full(n, interval_ms)
    )
    ts = 1_780_272_000_000 + 37_000 + np.cumsum(steps)  # starts mid-window
    power = np.clip(80 * np.sin(np.arange(n) / n * 4 * np.pi) + rng.normal(0, 5, n), 0, None)
    ref = TagRef("e/s/pv/a/inv/ac_power", "kW")
    agg = TumblingAggregator(
        window_ms=60_000, rollup_ms=(900_000, 3_600_000, 86_400_000), idle_close=False
    )
    out = []
    cuts = np.sort(rng.choice(np.arange(1, n), size=40, replace=False))
    for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, n], strict=True):
        b = PointBatch(
            (ref,),
            np.zeros(hi - lo, np.int32),
            ts[lo:hi],
            power[lo:hi],
            np.zeros(hi - lo, np.uint8),
        )
        out += agg.add(b, 0)[0]
    out += agg.flush()
    final = {}
    for w in out:
        for r in w.rows():
            final[(r["window_ms"], r["start_ms"])] = r["energy"]
    total = {
        size: sum(e for (wm, _), e in final.items() if wm == size)
        for size in (60_000, 900_000, 3_600_000, 86_400_000)
    }
    trapezoid = float(np.trapezoid(power, ts)) / 3_600_000
    for size, value in total.items():
        assert value == pytest.approx(trapezoid, rel=1e-9), size


def test_no_interpolation_across_a_gap_longer_than_max_gap():
    ref = TagRef("e/s/pv/a/inv/ac_power", "kW")
    agg = TumblingAggregator(
        window_ms=60_000, rollup_ms=(900_000,), idle_close=False, max_gap_ms=30_000
    )
    t0 = 1_780_272_000_000
    ts = np.array([t0 + 50_000, t0 + 70_000, t0 + 130_000, t0 + 170_000])  # gaps 20 s, 60 s, 40 s
    b = PointBatch(
        (ref,), np.zeros(4, np.int32), ts, np.array([10.0, 10.0, 20.0, 20.0]), np.zeros(4, np.uint8)
    )
    rows = {
        (r["window_ms"], r["start_ms"] - t0): r
        for w in agg.add(b, 0)[0] + agg.flush()
        for r in w.rows()
    }
    # only the 20 s segment (10 kW) is integrated, split 10 s / 10 s at the minute
    assert rows[(60_000, 0)]["energy"] == pytest.approx(10 * 10 / 3600)
    assert rows[(60_000, 60_000)]["energy"] == pytest.approx(10 * 10 / 3600)
    assert rows[(60_000, 120_000)]["energy"] == 0.0
    assert rows[(900_000, 0)]["energy"] == pytest.approx(20 * 10 / 3600)
    with pytest.raises(RuleError, match="at most window_ms"):
        TumblingAggregator(window_ms=60_000, max_gap_ms=120_000)


@pytest.mark.parametrize(
    ("lag_ms", "paths_reemitted"),
    [
        (300_000, ["e/s/a/l/m/power", "e/s/a/l/m/temp"]),  # within the lag: the whole window
        (60_000, ["e/s/a/l/m/temp"]),  # past it: started afresh with the new tag's rows only
    ],
)
def test_a_source_that_starts_late_finds_its_windows_within_max_source_lag(lag_ms, paths_reemitted):
    # Source "a" (power) runs 4 minutes ahead before source "b" (temp) sends anything.
    ahead = batch([(P, 1_000 * k, float(k)) for k in range(0, 240)])
    ahead = ahead.with_meta(source="a", received_ms=0)
    behind = batch([(T, 1_000 * k, 20.0 + k / 100) for k in range(0, 240)])
    behind = behind.with_meta(source="b", received_ms=0)
    agg = TumblingAggregator(
        rollup_ms=(), allowed_lateness_ms=5_000, idle_close=False, max_source_lag_ms=lag_ms
    )
    first = agg.add(ahead, 0)[0]
    assert [w.start_ms for w in first] == [0, 60_000, 120_000]
    reopened, late = agg.add(behind, 0)
    assert len(late) == 0
    (w0,) = [w for w in reopened if w.start_ms == 0]
    assert [t.path for t in w0.tags] == paths_reemitted
    # Either way each tag's final row is the one a single ordered run gives.
    final = {}
    for w in [*first, *reopened, *agg.flush()]:
        for r in w.rows():
            final[(r["path"], r["start_ms"])] = r
    direct = TumblingAggregator(rollup_ms=(), allowed_lateness_ms=5_000, idle_close=False)
    both = PointBatch.concat([ahead, behind]).with_meta(source="a", received_ms=0)
    want = {
        (r["path"], r["start_ms"]): r
        for w in direct.add(both, 0)[0] + direct.flush()
        for r in w.rows()
    }
    strip = ("revision", "closed_by")
    assert {k: {f: v for f, v in r.items() if f not in strip} for k, r in final.items()} == {
        k: {f: v for f, v in r.items() if f not in strip} for k, r in want.items()
    }


def test_windows_say_how_far_they_are_final():
    agg = TumblingAggregator(
        rollup_ms=(), allowed_lateness_ms=5_000, idle_close=False, max_source_lag_ms=60_000
    )
    closed, _ = agg.add(batch([(P, 1_000 * k, 1.0) for k in range(0, 300)]), 0)
    # newest point 299 s - lateness 5 s - max_gap 60 s - lag 60 s
    assert {w.final_before_ms for w in closed} == {174_000}
    assert {w.final_before_ms for w in agg.flush()} == {1 << 62}


def test_a_new_tag_in_a_window_every_other_tag_has_passed_keeps_their_rows():
    # P and T both pass window 0 by its end + lateness: their rows are final. A third tag
    # sends its first point into window 0 (on time for itself): the window is emitted again
    # with the same P and T rows and a row of the new tag, as if it had come in time.
    n = TagRef("e/s/a/l/m/new", "kW")
    first = [(P, 1_000 * k, float(k)) for k in range(0, 130)]
    first += [(T, 2_000 * k, 3.0 * k) for k in range(0, 65)]
    agg = TumblingAggregator(rollup_ms=(), allowed_lateness_ms=5_000, idle_close=False)
    closed, _ = agg.add(batch(first), 0)
    (w0,) = [w for w in closed if w.start_ms == 0]
    again, late = agg.add(batch([(n, 20_000, 9.0), (n, 40_000, 11.0)]), 0)
    assert len(late) == 0
    (w1,) = [w for w in again if w.start_ms == 0]
    assert w1.revision == 1
    before = {r["path"]: r for r in w0.rows()}
    after = {r["path"]: r for r in w1.rows()}
    assert set(after) == {P.path, T.path, n.path}
    skip = ("revision", "closed_by", "final_before_ms")
    for path, row in before.items():
        assert {k: v for k, v in after[path].items() if k not in skip} == {
            k: v for k, v in row.items() if k not in skip
        }
    assert (after[n.path]["count"], after[n.path]["sum"]) == (2, 20.0)


def _history(seed: int) -> tuple[list[PointBatch], dict[str, object]]:
    """A recorded history as a replay delivers it: batches spanning many windows, some
    points delayed (many past the lateness, none past ``max_source_lag_ms``, the bound of
    the batching contract), tags with gaps, one or two sources."""
    rng = np.random.default_rng(seed)
    tags = tuple(TagRef(f"e/s/a/l/m/t{i}", "kW" if i % 2 else "C") for i in range(1 + seed % 5))
    step = int(rng.choice([7_000, 15_000, 60_000]))
    t, g, v = [], [], []
    clock = 1_767_225_600_000 + int(rng.integers(0, 86_400_000))
    for _ in range(int(rng.integers(400, 1500))):
        clock += step
        if rng.random() < 0.004:
            clock += int(rng.integers(1, 40)) * 60_000  # the recorder was down
        for i in range(len(tags)):
            if rng.random() < 0.9:
                t.append(clock + int(rng.integers(0, step // 2)))
                g.append(i)
                v.append(float(rng.normal(10, 3)))
    ts, gid, value = np.array(t, np.int64), np.array(g, np.int32), np.array(v)
    delay = np.where(rng.random(len(ts)) < 0.03, rng.integers(1, 290_000, len(ts)), 0)
    order = np.argsort(ts + delay, kind="stable")
    ts, gid, value = ts[order], gid[order], value[order]
    two = seed % 2 == 0
    cuts = np.unique(np.r_[0, rng.integers(0, len(ts), 30), len(ts)]).tolist()
    out = []
    for a, b in itertools.pairwise(cuts):
        whole = PointBatch(tags, gid[a:b], ts[a:b], value[a:b], np.zeros(b - a, np.uint8))
        for name in ("a", "b") if two else ("",):
            part = whole.select(gid[a:b] % 2 == (name == "b")) if two else whole
            if len(part):
                out.append(part.with_meta(source=name, received_ms=0) if two else part)
    window_ms = int(rng.choice([60_000, 300_000]))
    params = {
        "window_ms": window_ms,
        "rollup_ms": (3 * window_ms, 86_400_000),
        "allowed_lateness_ms": int(rng.choice([0, 5_000, 60_000])),
        "idle_close": False,
        "zone": ["UTC", "Europe/Berlin"][seed % 2],
        "max_source_lag_ms": int(rng.choice([300_000, 600_000])),
    }
    return out, params


def _one_by_one(batches: list[PointBatch]) -> list[PointBatch]:
    """The same arrivals, one point at a time (no batch spans two windows)."""
    return [b.select(np.arange(len(b)) == i) for b in batches for i in range(len(b))]


def _final(windows, lates):
    final = {}
    for r in (r for w in windows for r in w.rows()):
        k = (r["path"], r["window_ms"], r["start_ms"])
        if k not in final or r["revision"] >= final[k]["revision"]:
            final[k] = r
    rows = sorted(
        str(sorted({**r, "revision": None, "closed_by": None}.items())) for r in final.values()
    )
    late = sorted((int(x), int(y)) for b in lates for x, y in zip(b.ts_ms, b.tag_idx, strict=True))
    return rows, late


def _replay(batches, params, *, blocks):
    agg = TumblingAggregator(**params, blocks=blocks)
    out, lates = [], []
    for b in batches:
        w, late = agg.add(b, 0)
        out += w
        lates.append(late)
    return out + agg.flush(), lates


@pytest.mark.parametrize("seed", range(8))
def test_a_replay_closing_windows_in_bulk_equals_one_point_at_a_time(seed):
    """Batches spanning thousands of windows close them together, from arrays; the rows
    (bit for bit), the rollups and the late points must be those of the same arrivals one
    point at a time, where every window is closed on its own."""
    batches, params = _history(seed)
    bulk, bulk_late = _replay(batches, params, blocks=True)
    assert any(w.starts is not None and len(set(w.starts.tolist())) > 2 for w in bulk)
    single, single_late = _replay(_one_by_one(batches), params, blocks=False)
    assert all(w.starts is None for w in single)
    assert _final(bulk, bulk_late) == _final(single, single_late)


def test_a_block_reads_as_its_windows():
    batches, params = _history(1)
    blocks, _ = _replay(batches, params, blocks=True)
    split, _ = _replay(batches, params, blocks=False)
    one_by_one = [one for w in blocks for one in w.windows()]
    assert [r for w in blocks for r in w.rows()] == [r for w in split for r in w.rows()]
    assert [(w.window_ms, w.start_ms, len(w)) for w in one_by_one] == [
        (w.window_ms, w.start_ms, len(w)) for w in split
    ]


def test_negative_zero_samples_integrate_to_zero_in_every_path():
    """-0.0 samples: the integral is +0.0 whether the window is summarised alone or combined."""
    pts = [(P, 60_000 * k + 1_000 * i, -0.0) for k in range(6) for i in range(3)]
    for size in (1, len(pts)):
        agg = TumblingAggregator(window_ms=60_000, rollup_ms=(180_000,), idle_close=False)
        out = _all_rows(agg, pts, size)
        assert all(dict(r[4])["twa"] == 0.0 for r in out)
        assert all(str(dict(r[4])["energy"]) == "0.0" for r in out)


@pytest.mark.parametrize("seed", range(20))
def test_stable_order_is_lexsort(seed):
    from operators._state import reorder, stable_order

    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 400))
    keys = [rng.integers(0, int(rng.choice([2, 60, 70_000])), n) for _ in range(1 + seed % 3)]
    if seed % 2:
        keys[-1] = np.sort(keys[-1])
    want = np.lexsort(keys[::-1])
    assert stable_order(*keys).tolist() == want.tolist()
    got = reorder(*keys)
    assert (want.tolist() == list(range(n))) if got is None else got.tolist() == want.tolist()
