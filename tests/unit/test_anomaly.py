import pytest

from operators.anomaly.logic import AnomalyDetector, AnomalyRule, Gate
from operators.errors import RuleError
from tests.unit.points import batch_at
from wire.records import PointBatch, TagRef

SOC = TagRef("e/s/storage/bess/b1/soc", "%")
SOC2 = TagRef("e/s/storage/bess/b2/soc", "%")
LOAD = TagRef("e/s/load/lv/p1/active_power", "kW")
V = TagRef("e/s/grid/poc/m1/voltage", "V")
EFF = TagRef("e/s/pv/a1/inv1/efficiency", "%")
T0 = 1_767_225_600_000


def batch(rows):
    return batch_at(T0, rows)


def series(tag, values, step_ms=1000, start_ms=0):
    return [(tag, start_ms + i * step_ms, float(v)) for i, v in enumerate(values)]


def states(events):
    return [(e.rule, e.path.rsplit("/", 2)[1], e.state, e.ts_ms - T0) for e in events]


SOC_DROP = AnomalyRule("soc-drop", "drop", "soc", lookback_ms=300_000, threshold=0.2)
SPIKE = AnomalyRule("spike", "spike", "*/load/*", lookback_ms=60_000, factor=2.0, min_baseline=1.0)
DEV = AnomalyRule("vdev", "deviation", "voltage", lookback_ms=120_000, nominal=400, threshold=0.1)
RATE = AnomalyRule("rate", "rate", "soc", lookback_ms=10_000, threshold=1.0)
EFF_DROP = AnomalyRule(
    "eff", "drop", "efficiency", lookback_ms=600_000, threshold=0.15, ignore_below=50
)
PV = TagRef("e/s/pv/a1/inv1/ac_power", "kW")
FLAT = AnomalyRule("flat", "flatline", "ac_power", lookback_ms=300_000, tolerance=0.1)
FLAT_EXACT = AnomalyRule("flat0", "flatline", "ac_power", lookback_ms=120_000)
FLAT_DAY = AnomalyRule(
    "flatd", "flatline", "ac_power", lookback_ms=120_000, tolerance=0.1, ignore_below=1
)
CLIP = AnomalyRule("clip", "clipping", "ac_power", lookback_ms=180_000, limit=100, tolerance=1)
OUT = AnomalyRule("out", "outlier", "ac_power", lookback_ms=600_000, threshold=3)
RATE_1 = AnomalyRule("rate1", "rate", "soc", lookback_ms=60_000, threshold=0.1)
GAP = AnomalyRule("gap", "gap", "ac_power", lookback_ms=150_000)
GAP_DAY = AnomalyRule("gapd", "gap", "ac_power", lookback_ms=150_000, ignore_below=1)
MIN = 60_000

CASES = [
    pytest.param(
        SOC_DROP, series(SOC, [60] * 10 + [49] * 5, step_ms=10_000), [], id="drop-below-threshold"
    ),
    pytest.param(
        SOC_DROP,
        series(SOC, [60] * 10 + [47, 47, 47], step_ms=10_000),
        [("soc-drop", "b1", "raised", 100_000)],
        id="drop-raises-once",
    ),
    pytest.param(
        SOC_DROP,
        series(SOC, [60, 47] + [47] * 35, step_ms=10_000),
        [("soc-drop", "b1", "raised", 10_000), ("soc-drop", "b1", "cleared", 300_000)],
        id="drop-clears-when-max-leaves-lookback",
    ),
    pytest.param(SOC_DROP, series(SOC, [60, 59, 58, 57], step_ms=120_000), [], id="slow-decline"),
    pytest.param(
        SPIKE,
        series(LOAD, [60, 61, 59, 125, 60]),
        [("spike", "p1", "raised", 3000), ("spike", "p1", "cleared", 4000)],
        id="spike",
    ),
    pytest.param(SPIKE, series(LOAD, [0.5, 0.5, 3.0]), [], id="spike-needs-baseline"),
    pytest.param(SPIKE, series(LOAD, [60, 100, 110]), [], id="rise-below-factor"),
    pytest.param(
        DEV,
        series(V, [400] * 60 + [350] * 200, step_ms=1000)[:150],
        [],
        id="deviation-needs-sustained-mean",
    ),
    pytest.param(
        DEV,
        series(V, [400] * 10 + [340] * 200, step_ms=1000),
        [("vdev", "m1", "raised", 29_000)],
        id="deviation-raises",
    ),
    pytest.param(
        RATE, series(SOC, [50, 50, 50, 50, 50, 50, 60]), [("rate", "b1", "raised", 6000)], id="rate"
    ),
    pytest.param(EFF_DROP, series(EFF, [97, 97, 0, 0, 97, 96]), [], id="ignore-night-zeros"),
    pytest.param(
        RATE_1,
        series(SOC, [10, 10, 30, 30], step_ms=MIN),
        [("rate1", "b1", "raised", 2 * MIN), ("rate1", "b1", "cleared", 3 * MIN)],
        id="rate-lookback-equal-to-the-sample-interval",
    ),
    pytest.param(
        FLAT,
        series(PV, [1, 2, 3, 3, 3.05, 3, 3, 3, 3, 3, 4, 5], step_ms=MIN),
        [("flat", "inv1", "raised", 7 * MIN), ("flat", "inv1", "cleared", 10 * MIN)],
        id="flatline-within-tolerance-for-the-duration",
    ),
    pytest.param(
        FLAT,
        series(PV, [3, 3, 3, 3, 3.2, 3.2, 3.2, 3.2, 3.2, 3.4], step_ms=MIN),
        [],
        id="flatline-broken-by-a-step-above-tolerance",
    ),
    pytest.param(
        FLAT_EXACT,
        series(PV, [5, 5, 5, 5.001, 5.001, 5.001], step_ms=MIN),
        [
            ("flat0", "inv1", "raised", 2 * MIN),
            ("flat0", "inv1", "cleared", 3 * MIN),
            ("flat0", "inv1", "raised", 5 * MIN),
        ],
        id="flatline-exact-equality",
    ),
    pytest.param(
        FLAT_DAY,
        series(PV, [0, 0, 0, 0, 0, 7, 8, 9], step_ms=MIN),
        [],
        id="flatline-ignores-night-zeros",
    ),
    pytest.param(
        CLIP,
        series(PV, [50, 99.5, 100, 100, 99.2, 100, 80, 100, 100], step_ms=MIN),
        [("clip", "inv1", "raised", 4 * MIN), ("clip", "inv1", "cleared", 6 * MIN)],
        id="clipping-plateau-near-the-limit",
    ),
    pytest.param(
        CLIP,
        series(PV, [99.5, 100, 97, 100, 100], step_ms=MIN),
        [],
        id="clipping-interrupted-plateau",
    ),
    pytest.param(
        OUT,
        series(PV, [10, 11, 10, 12, 11, 10, 11, 50, 10, 11], step_ms=MIN),
        [("out", "inv1", "raised", 7 * MIN), ("out", "inv1", "cleared", 8 * MIN)],
        id="outlier-hampel",
    ),
    pytest.param(
        OUT,
        series(PV, [10, 11, 50, 10, 11, 10], step_ms=MIN),
        [],
        id="outlier-needs-min-points",
    ),
    pytest.param(
        OUT,
        series(PV, [10, 10, 10, 10, 10, 10, 12], step_ms=MIN),
        [],
        id="outlier-not-judged-when-mad-is-zero",
    ),
    pytest.param(
        EFF_DROP, series(EFF, [97, 97, 80]), [("eff", "inv1", "raised", 2000)], id="efficiency-drop"
    ),
    pytest.param(
        GAP,
        [(PV, t * MIN, 5.0) for t in (0, 1, 2, 6, 7, 9, 10)],
        [("gap", "inv1", "raised", 4.5 * MIN), ("gap", "inv1", "cleared", 6 * MIN)],
        id="gap-raised-lookback-after-the-last-sample-cleared-by-the-next",
    ),
    pytest.param(
        GAP,
        [(PV, t * MIN, 5.0) for t in (0, 2.5, 5, 7.5)],
        [],
        id="gap-exactly-the-lookback-is-no-gap",
    ),
    pytest.param(
        GAP_DAY,
        series(PV, [5, 5, 0, 0, 0, 0, 5, 5], step_ms=MIN),
        [("gapd", "inv1", "raised", 3.5 * MIN), ("gapd", "inv1", "cleared", 6 * MIN)],
        id="gap-counts-ignored-values-as-missing",
    ),
]


@pytest.mark.parametrize(("rule", "rows", "expected"), CASES)
def test_rules(rule, rows, expected):
    assert states(AnomalyDetector((rule,)).process(batch(rows))) == expected


@pytest.mark.parametrize(("rule", "rows", "expected"), CASES)
def test_batching_does_not_change_results(rule, rows, expected):
    det = AnomalyDetector((rule,))
    events = []
    for i in range(0, len(rows), 3):
        events += det.process(batch(rows[i : i + 3]))
    assert states(events) == expected


def test_tags_are_independent():
    rows = series(SOC, [60] * 5 + [40] * 2, step_ms=10_000) + series(SOC2, [60] * 7, step_ms=10_000)
    assert states(AnomalyDetector((SOC_DROP,)).process(batch(rows))) == [
        ("soc-drop", "b1", "raised", 50_000)
    ]


def test_event_details_carry_observed_values():
    (e,) = AnomalyDetector((SOC_DROP,)).process(batch(series(SOC, [60, 40], step_ms=1000)))
    assert e.kind == "anomaly" and e.details["value"] == 40.0 and e.details["baseline"] == 60.0
    assert e.details["lookback_ms"] == 300_000 and e.details["score"] == pytest.approx(1 / 3)
    assert "dropped from 60 to 40" in e.message


def test_history_is_pruned_to_the_lookback():
    det = AnomalyDetector((SPIKE,))
    for k in range(20):
        det.process(batch(series(LOAD, [60] * 60, start_ms=k * 60_000)))
    assert len(det._hist["spike"].key) <= 61


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kind": "drop", "lookback_ms": 0, "threshold": 0.1},
        {"kind": "deviation", "lookback_ms": 1000, "threshold": 0.1},
        {"kind": "spike", "lookback_ms": 1000, "factor": 1.0},
        {"kind": "drop", "lookback_ms": 1000},
        {"kind": "clipping", "lookback_ms": 1000},
        {"kind": "outlier", "lookback_ms": 1000, "threshold": 3, "min_points": 2},
        {"kind": "flatline", "lookback_ms": 1000, "tolerance": -1},
    ],
)
def test_invalid_rules(kwargs):
    with pytest.raises(RuleError):
        AnomalyRule("r", tags="*", **kwargs)


def test_duplicate_rule_ids():
    with pytest.raises(RuleError):
        AnomalyDetector((SOC_DROP, SOC_DROP))


def test_points_older_than_the_newest_are_skipped_and_counted():
    det = AnomalyDetector((SOC_DROP,))
    det.process(batch(series(SOC, [60, 60, 60], step_ms=10_000)))
    assert det.process(batch([(SOC, 5_000, 10.0), (SOC, 20_000, 10.0)])) == []
    assert det.skipped == {"soc-drop": 2}


def test_staircase_history_stays_small_for_noisy_signals():
    import numpy as np

    rng = np.random.default_rng(0)
    det = AnomalyDetector((SOC_DROP,))
    for k in range(10):
        det.process(batch(series(SOC, 60 + rng.normal(0, 0.1, 300), start_ms=k * 300_000)))
    assert len(det._hist["soc-drop"].key) < 50  # not the 300 points of the lookback


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize(
    "rule",
    [
        SOC_DROP,
        SPIKE,
        DEV,
        AnomalyRule("flat", "flatline", "ac_power", lookback_ms=20_000, tolerance=0.5),
        AnomalyRule("clip", "clipping", "ac_power", lookback_ms=5_000, limit=110, tolerance=2),
        AnomalyRule("out", "outlier", "ac_power", lookback_ms=60_000, threshold=3),
    ],
    ids=lambda r: r.kind,
)
def test_disordered_stream_gives_the_same_events_for_any_batching(rule, seed):
    import numpy as np

    rng = np.random.default_rng(seed)
    tag = {"drop": SOC, "spike": LOAD, "deviation": V}.get(rule.kind, PV)
    base = {"drop": 60.0, "spike": 20.0, "deviation": 400.0}.get(rule.kind, 100.0)
    values = base * (1 + 0.3 * np.sin(np.arange(400) / 17)) + rng.normal(0, base / 50, 400)
    values[[100, 250]] *= 3  # spikes
    values[300:340] = values[300]  # a frozen stretch
    values[150:170] = 110 + rng.uniform(-1, 1, 20)  # a plateau at a limit
    rows = series(tag, values.round(3).tolist(), step_ms=1000)
    late = rng.random(len(rows)) < 0.1  # one point in ten arrives up to 5 points late
    order = np.argsort(np.arange(len(rows)) + late * rng.integers(1, 6, len(rows)), kind="stable")
    rows = [rows[i] for i in order]

    def run(size: int) -> list:
        det = AnomalyDetector((rule,))
        out = []
        for i in range(0, len(rows), size):
            out += det.process(batch(rows[i : i + size]))
        return [(e.ts_ms, e.state, e.message, e.details["score"]) for e in out]

    whole = run(len(rows))
    assert whole, "the signal should raise the rule at least once"
    for size in (1, 7, 50):
        assert run(size) == whole  # bit for bit, messages included


def test_historical_values_are_not_judged_by_live_anomaly_rules():
    import numpy as np

    from wire.records import TagRef

    ref = TagRef("e/s/a/l/m/load", "kW")
    rule = AnomalyRule("spike", "spike", "load", lookback_ms=60_000, factor=2.0)
    hist = PointBatch(
        (ref,),
        np.zeros(2, np.int32),
        np.array([1000, 2000]),
        np.array([10.0, 100.0]),
        np.zeros(2, np.uint8),
        extra={"historical": np.array([True, True])},
    )
    assert AnomalyDetector((rule,)).process(hist) == []


def test_the_sun_elevation_agrees_with_nrel_spa_from_pvlib():
    """pvlib's SPA (an independent implementation) over two years, four places."""
    import numpy as np
    import pandas as pd
    import pvlib

    from operators.sun import sun_elevation_deg

    t = pd.date_range("2026-01-01", "2028-01-01", freq="37min", tz="UTC")
    for lat, lon in ((48.45, 5.58), (-33.9, 18.4), (64.1, -21.9), (35.0, -106.6)):
        spa = pvlib.solarposition.get_solarposition(t, lat, lon, method="nrel_numpy")
        ours = sun_elevation_deg(t.as_unit("ms").asi8, lat, lon)
        assert np.abs(ours - (90 - spa["zenith"].to_numpy())).max() < 0.5


def test_rules_gated_on_the_sun_judge_daylight_points_only():
    # St. John's (47.6 N, 52.7 W), 2026-06-01: the sun passes 5 degrees at about 08:18 UTC.
    t0 = 1_780_300_800_000  # 08:00 UTC
    rule = AnomalyRule(
        "flatd", "flatline", "ac_power", lookback_ms=10 * MIN, tolerance=0.0, sun_above_deg=5
    )
    rows = [(PV, t0 - T0 + i * MIN, 0.0) for i in range(40)]  # frozen at 0 from 08:00 on
    det = AnomalyDetector((rule,), location=(47.6, -52.7))
    events = det.process(batch(rows))
    # At night nothing is judged; in daylight the frozen value raises after 10 minutes of it.
    assert [(e.state, (e.ts_ms - t0) // MIN) for e in events] == [("raised", 29)]
    ungated = AnomalyDetector((AnomalyRule("flat", "flatline", "ac_power", lookback_ms=10 * MIN),))
    assert [(e.ts_ms - t0) // MIN for e in ungated.process(batch(rows))] == [10]


def test_a_rule_gated_on_the_sun_needs_the_site_place():
    from operators.errors import RuleError

    rule = AnomalyRule("d", "drop", "soc", lookback_ms=MIN, threshold=0.2, sun_above_deg=5)
    with pytest.raises(RuleError, match=r"rules\.0\.sun_above_deg: .*site\.latitude"):
        AnomalyDetector((rule,))


IRR = TagRef("e/s/weather/met/m1/irradiance", "W/m2")
FLAT_SUNNY = AnomalyRule(
    "flat-sunny",
    "flatline",
    "ac_power",
    lookback_ms=5 * MIN,
    when=Gate(tag="*/irradiance", above=50, max_age_ms=2 * MIN, max_skew_ms=MIN),
)


def _gate_day(pv_value=0.0):
    """Irradiance each minute (0 until minute 20, then 400); PV power frozen, every 10 s."""
    irr = [(IRR, m * MIN, 0.0 if m < 20 else 400.0) for m in range(60)]
    pv = [(PV, k * 10_000, pv_value) for k in range(360)]
    return irr, pv


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        # Frozen while the irradiance is above 50 from minute 20: raised 5 minutes later.
        ("gate-open-from-20", [("raised", 25 * MIN)]),
        # The irradiance stops at minute 30: two minutes on its samples are too old.
        ("gate-stale-after-32", [("raised", 25 * MIN)]),
        # No irradiance at all: never judged.
        ("no-gate-tag", []),
        # Irradiance never above 50.
        ("gate-closed", []),
    ],
)
def test_when_gates_a_rule_on_another_tag(case, expected):
    irr, pv = _gate_day()
    if case == "gate-stale-after-32":
        irr = [r for r in irr if r[1] <= 30 * MIN]
    elif case == "no-gate-tag":
        irr = []
    elif case == "gate-closed":
        irr = [(IRR, t, 40.0) for _, t, _ in irr]
    det = AnomalyDetector((FLAT_SUNNY,))
    events = det.process(batch(sorted(irr + pv, key=lambda r: r[1])))
    assert [(e.state, e.ts_ms - T0) for e in events] == expected


def test_when_gate_stale_samples_close_the_gate_and_a_new_run_starts_after():
    irr, pv = _gate_day()
    irr = [r for r in irr if r[1] <= 30 * MIN or r[1] >= 45 * MIN]  # a 15-minute hole
    det = AnomalyDetector((FLAT_SUNNY,))
    events = det.process(batch(sorted(irr + pv, key=lambda r: r[1])))
    # Judged 20-32 min (raised at 25); not judged 32-45 (the frozen run goes on, it is
    # still flat when judged again, so nothing clears).
    assert [(e.state, e.ts_ms - T0) for e in events] == [("raised", 25 * MIN)]


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_when_gives_the_same_events_for_any_batching_and_interleaving(seed):
    import numpy as np

    rng = np.random.default_rng(seed)
    irr = [
        (IRR, m * MIN, float(v)) for m, v in enumerate(rng.choice([0.0, 400.0], 60, p=[0.3, 0.7]))
    ]
    pv = [(PV, k * 10_000, float(v)) for k, v in enumerate(np.repeat(rng.normal(50, 5, 9), 40))]

    def run(pieces):
        det = AnomalyDetector((FLAT_SUNNY,))
        return [(e.state, e.ts_ms) for p in pieces for e in det.process(batch(p))]

    want = run([sorted(irr + pv, key=lambda r: r[1])])
    assert want, "the case must raise the rule"
    # Two sources cut at random and interleaved at random, the gate's source at most 50 s
    # behind the rule's (max_skew_ms is 60 s) and anywhere ahead within the hour.
    sizes = rng.integers(1, 40, 200)
    pieces, i_irr, i_pv, k = [], 0, 0, 0
    while i_irr < len(irr) or i_pv < len(pv):
        n = int(sizes[k % len(sizes)])
        k += 1
        m = min(n, 5, len(pv) - i_pv)
        gate_newest = irr[i_irr - 1][1] if i_irr else -MIN
        behind = i_irr < len(irr) and m and pv[i_pv + m - 1][1] - gate_newest > 50_000
        if m and not behind and (rng.random() < 0.5 or i_irr >= len(irr)):
            pieces.append(pv[i_pv : i_pv + m])
            i_pv += m
        else:
            pieces.append(irr[i_irr : i_irr + max(1, n // 10)])
            i_irr = min(i_irr + max(1, n // 10), len(irr))
    assert run(pieces) == want


@pytest.mark.parametrize(
    ("gate", "match"),
    [
        ({"tag": "*/irradiance"}, "give above and/or below"),
        ({"tag": "*/irradiance", "above": 100, "below": 50}, "must be less than below"),
        ({"tag": "*/irradiance", "above": 1, "max_age_ms": 0}, "max_age_ms must be positive"),
        ({"tag": "*/irradiance", "above": 1, "max_lead_ms": -1}, "max_lead_ms >= 0"),
    ],
)
def test_invalid_gates(gate, match):
    with pytest.raises(RuleError, match=match):
        Gate(**gate)


def _rule(kind, lookback_ms, **kw):
    extra = {"drop": {"threshold": 0.2}, "rate": {"threshold": 1}, "outlier": {"threshold": 3}}
    opts = {"id": kind, "tags": "ac_power", **extra.get(kind, {}), **kw}
    return AnomalyRule(kind=kind, lookback_ms=lookback_ms, **opts)


@pytest.mark.parametrize(
    ("kind", "lookback_ms", "kw", "problem"),
    [
        # The window is (t - lookback, t]: a drop needs more than one interval.
        ("drop", 1000, {}, "never holds two samples"),
        ("drop", 1001, {}, None),
        ("spike", 999, {}, "never holds two samples"),
        # rate's window is [t - lookback, t]: one interval is enough.
        ("rate", 999, {}, "never holds two samples"),
        ("rate", 1000, {}, None),
        # outlier needs min_points earlier samples in (t - lookback, t).
        ("outlier", 5000, {}, "holds 4 earlier samples"),
        ("outlier", 5001, {}, None),
        ("outlier", 3000, {"min_points": 3}, "holds 2 earlier samples"),
        ("outlier", 3001, {"min_points": 3}, None),
        ("gap", 999, {}, "would fire at every sample"),
        ("gap", 1000, {}, None),
        # Rules that compare a run's duration or a mean work with any lookback.
        ("flatline", 1, {}, None),
        ("clipping", 1, {"limit": 10}, None),
        ("deviation", 1, {"nominal": 230, "threshold": 0.1}, None),
    ],
)
def test_a_rule_that_cannot_work_at_the_sampling_interval_says_why(kind, lookback_ms, kw, problem):
    why = _rule(kind, lookback_ms, **kw).sampling_problem(1000)
    if problem is None:
        assert why is None
    else:
        assert problem in why


@pytest.mark.parametrize(("kind", "lookback_ms"), [("drop", 1001), ("rate", 1000)])
def test_the_shortest_lookback_allowed_fires(kind, lookback_ms):
    pv = [(PV, k * 1000, v) for k, v in enumerate([100.0, 100.0, 50.0, 50.0, 50.0])]
    det = AnomalyDetector((_rule(kind, lookback_ms),))
    assert [(e.state, e.ts_ms - T0) for e in det.process(batch(pv))] == [
        ("raised", 2000),
        ("cleared", 3000),
    ]


def test_a_gate_older_than_its_sampling_says_why():
    gate = Gate(tag="*/irradiance", above=50, max_age_ms=60_000)
    assert gate.sampling_problem(60_000) is None
    assert "stays mostly closed" in gate.sampling_problem(60_001)
