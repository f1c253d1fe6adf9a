"""Machine states and OEE: episodes, durations, counters, windows, batching."""

from __future__ import annotations

import numpy as np
import pytest

from operators.errors import RuleError
from operators.state.logic import StateMap, StateTracker
from operators.state.oee import OeeConfig, counter_increments, state_durations
from tests.unit.points import batch_at
from wire.records import Event, Kpi, TagRef

T0 = 1_780_304_400_000  # 2026-06-01T09:00:00Z, on a 15-minute boundary
M = "acme/s1/production/line-1/press-01"
STATE, COUNT, REJECT = (TagRef(f"{M}/{t}") for t in ("state", "cycle_count", "reject_count"))
CODES = {1: "run", 2: "idle", 3: "fault", 0: "off"}


def batch(rows):
    return batch_at(T0, rows)


def episodes(events):
    return [
        (e.state, e.ts_ms - T0, None if e.details["end_ms"] is None else e.details["end_ms"] - T0)
        for e in events
        if isinstance(e, Event)
    ]


@pytest.mark.parametrize(
    ("samples", "expected"),
    [
        # run, run, idle, idle, run: one episode per change, each opened then closed.
        (
            [(0, 1), (1000, 1), (2000, 2), (3000, 2), (4000, 1)],
            [
                ("run", 0, None),
                ("run", 0, 2000),
                ("idle", 2000, None),
                ("idle", 2000, 4000),
                ("run", 4000, None),
            ],
        ),
        # Unmapped values are the default state.
        ([(0, 7), (1000, 1)], [("unknown", 0, None), ("unknown", 0, 1000), ("run", 1000, None)]),
        # A silence longer than max_gap_ms (5 min) ends the episode at its last sample.
        (
            [(0, 1), (1000, 1), (400_000, 1)],
            [("run", 0, None), ("run", 0, 1000), ("run", 400_000, None)],
        ),
        # An older point than the tag's newest is skipped.
        ([(0, 1), (2000, 1), (1000, 3)], [("run", 0, None)]),
    ],
)
def test_state_episodes(samples, expected):
    tracker = StateTracker("machines", (StateMap("*/state", CODES),))
    events = tracker.process(batch([(STATE, t, float(v)) for t, v in samples]))
    assert episodes(events) == expected
    closed = [e for e in events if e.details["end_ms"] is not None]
    assert all(e.details["duration_s"] == (e.details["end_ms"] - e.ts_ms) / 1000 for e in closed)


def test_episodes_are_the_same_for_any_batching():
    rng = np.random.default_rng(3)
    values = np.repeat(rng.choice([0, 1, 2, 3], 60), rng.integers(1, 20, 60))
    rows = [(STATE, k * 1000, float(v)) for k, v in enumerate(values)]
    whole = StateTracker("m", (StateMap("*/state", CODES),)).process(batch(rows))
    for _ in range(5):
        tracker = StateTracker("m", (StateMap("*/state", CODES),))
        cuts = np.sort(rng.choice(np.arange(1, len(rows)), 30, replace=False))
        got = [
            e
            for part in np.split(np.arange(len(rows)), cuts)
            for e in tracker.process(batch([rows[i] for i in part]))
        ]
        assert got == whole


@pytest.mark.parametrize(
    ("ts", "codes", "lo", "hi", "held"),
    [
        # Each sample holds until the next; the last for max_gap (100) at most.
        ([0, 10, 30], [0, 1, 0], 0, 1000, [10 + 100, 20]),
        # Cut at the window bounds.
        ([0, 10, 30], [0, 1, 0], 5, 20, [5, 10]),
        # A gap longer than max_gap: no state in the hole.
        ([0, 500], [1, 1], 0, 1000, [0, 200]),
        ([], [], 0, 1000, [0, 0]),
    ],
)
def test_state_durations(ts, codes, lo, hi, held):
    got = state_durations(np.array(ts, np.int64), np.array(codes, np.int32), 2, lo, hi, 100)
    assert got.tolist() == held


@pytest.mark.parametrize(
    ("values", "counter_max", "increments"),
    [
        ([10, 12, 15], None, [2, 3]),
        # A reset: the new value counts from zero.
        ([10, 12, 3, 5], None, [2, 3, 2]),
        # A 16-bit wrap: 65534 -> 2 is 4 parts.
        ([65530, 65534, 2, 5], 65535, [4, 4, 3]),
        # With counter_max, a fall that does not pass from the top quarter to the bottom one
        # is a reset.
        ([40_000, 40_010, 7], 65535, [10, 7]),
    ],
)
def test_counter_increments(values, counter_max, increments):
    got = counter_increments(np.array(values, np.float64), counter_max)
    assert got.tolist() == increments


OEE = OeeConfig(
    window_ms=900_000,
    planned_downtime_states=("off",),
    ideal_cycle_s=6.0,
    counter_max=65535,
    allowed_lateness_ms=0,
)


def _machine_rows(states, counts, rejects):
    rows = [(STATE, t, float(v)) for t, v in states]
    rows += [(COUNT, t, float(v)) for t, v in counts]
    rows += [(REJECT, t, float(v)) for t, v in rejects]
    return sorted(rows, key=lambda r: r[1])


def kpis(items):
    return {(k.name, k.start_ms - T0): round(k.value, 9) for k in items if isinstance(k, Kpi)}


def test_oee_of_a_window_follows_the_standard_definitions():
    # 09:00-09:15: run 600 s, idle 200 s, off (planned downtime) 100 s; 90 parts, 9 rejects.
    s = 1000
    states = [(0, 1), (600 * s, 2), (800 * s, 0), (900 * s, 1), (1900 * s, 1)]
    counts = [(0, 65500), (300 * s, 65535 - 4), (600 * s, 54)]  # wraps: 31 + 59 = 90 parts
    rejects = [(0, 100), (600 * s, 109), (1900 * s, 109)]
    counts += [(1900 * s, 54)]
    tracker = StateTracker("machines", (StateMap("*/state", CODES, max_gap_ms=1_000_000, oee=OEE),))
    got = kpis(tracker.process(batch(_machine_rows(states, counts, rejects))))
    a, p, q = 600 / 800, 6 * 90 / 600, 81 / 90
    assert got == {
        ("availability", 0): round(a, 9),
        ("performance", 0): round(p, 9),
        ("quality", 0): round(q, 9),
        ("oee", 0): round(a * p * q, 9),
        # 09:15-09:30: all run (planned 900 s), no parts: no performance, quality or OEE.
        ("availability", 900 * s): 1.0,
        ("performance", 900 * s): 0.0,
    }


def test_a_state_that_spans_two_windows_is_cut_at_the_boundary():
    s = 1000
    # Run from 09:10 to 09:20: 300 s in each window; idle before and after.
    states = [(0, 2), (600 * s, 1), (1200 * s, 2), (2800 * s, 2)]
    counts = [(0, 0), (2800 * s, 0)]
    rejects = [(0, 0), (2800 * s, 0)]
    tracker = StateTracker("machines", (StateMap("*/state", CODES, max_gap_ms=2_000_000, oee=OEE),))
    got = kpis(tracker.process(batch(_machine_rows(states, counts, rejects))))
    assert got[("availability", 0)] == round(300 / 900, 9)
    assert got[("availability", 900 * s)] == round(300 / 900, 9)


def test_oee_is_the_same_for_any_batching_and_interleaving():
    rng = np.random.default_rng(8)
    s = 1000
    states = [
        (k * 10 * s, int(v)) for k, v in enumerate(np.repeat(rng.choice([1, 2, 3, 0], 30), 12))
    ]
    counts = [
        (k * 7 * s, float(v % 65536))
        for k, v in enumerate(np.cumsum(rng.integers(0, 3, 514)) + 65000)
    ]
    rejects = [(k * 60 * s, float(v)) for k, v in enumerate(np.cumsum(rng.integers(0, 2, 60)))]
    rows = _machine_rows(states, counts, rejects)
    sm = StateMap("*/state", CODES, max_gap_ms=60_000, oee=OEE)

    def run(pieces):
        t = StateTracker("m", (sm,))
        out = [x for p in pieces for x in t.process(batch(p))] + t.flush()
        return kpis(out), episodes(out)

    want = run([rows])
    assert len(want[0]) >= 8
    for _ in range(4):
        # Each tag keeps its order; tags interleave at random, cut at random.
        per_tag = {tag: [r for r in rows if r[0] == tag] for tag in (STATE, COUNT, REJECT)}
        pieces = []
        while any(per_tag.values()):
            tag = rng.choice([t for t, v in per_tag.items() if v])
            n = int(rng.integers(1, 40))
            pieces.append(per_tag[tag][:n])
            per_tag[tag] = per_tag[tag][n:]
        got = run(pieces)
        assert got[0] == want[0] and sorted(got[1], key=str) == sorted(want[1], key=str)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"reject_tag": None}, "give reject_tag or good_tag"),
        ({"good_tag": "good_count"}, "give reject_tag or good_tag"),
        ({"ideal_cycle_s": 0}, "must be positive"),
    ],
)
def test_invalid_oee(kw, match):
    with pytest.raises(RuleError, match=match):
        OeeConfig(**kw)


def test_oee_needs_the_state_tags_name():
    with pytest.raises(RuleError, match="must end in the state tag's name"):
        StateMap("*/production/*/*", CODES, oee=OeeConfig())
