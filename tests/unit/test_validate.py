import numpy as np
import pytest

from operators._state import tag_matches
from operators.errors import RuleError
from operators.validate.config import RangeRule, UnitConversion, ValidateOp
from operators.validate.logic import Validator
from wire.records import PointBatch, Quality, TagRef

P = TagRef("acme/s/pv/a1/inv-01/ac_power", "kW")
S = TagRef("acme/s/storage/bess/bess-01/soc", "%")


def batch(rows, received_ms=100_000):
    """rows: (tag, ts, value[, quality])."""
    tags = tuple(dict.fromkeys(r[0] for r in rows))
    return PointBatch(
        tags,
        [tags.index(r[0]) for r in rows],
        [r[1] for r in rows],
        [r[2] for r in rows],
        [int(r[3]) if len(r) > 3 else 0 for r in rows],
        received_ms=received_ms,
    )


@pytest.mark.parametrize(
    ("pattern", "ref", "ok"),
    [
        ("ac_power", P, True),
        ("*power", P, True),
        ("soc", P, False),
        ("acme/*/pv/*", P, True),
        ("acme/*/storage/*", P, False),
    ],
)
def test_tag_matches(pattern, ref, ok):
    assert tag_matches(pattern, ref) is ok


# Table: rules, points -> reasons of rejected points (in order), accepted values.
CASES = [
    pytest.param(ValidateOp(type="validate"), [(P, 1000, 5.0)], [], [5.0], id="clean"),
    pytest.param(
        ValidateOp(type="validate"),
        [(P, 1000, 5.0, Quality.BAD), (P, 2000, 6.0, Quality.UNCERTAIN)],
        ["quality"],
        [6.0],
        id="bad-quality",
    ),
    pytest.param(
        ValidateOp(type="validate", accept_quality=("GOOD",)),
        [(P, 1000, 6.0, Quality.UNCERTAIN)],
        ["quality"],
        [],
        id="good-only",
    ),
    pytest.param(
        ValidateOp(type="validate"),
        [(P, 1000, float("nan")), (P, 2000, float("inf"))],
        ["non-finite", "non-finite"],
        [],
        id="non-finite",
    ),
    pytest.param(
        ValidateOp(type="validate", max_future_ms=5000),
        [(P, 106_000, 1.0), (P, 104_000, 2.0)],
        ["clock-skew"],
        [2.0],
        id="future",
    ),
    pytest.param(
        ValidateOp(type="validate", max_past_ms=60_000),
        [(P, 39_000, 1.0), (P, 41_000, 2.0)],
        ["too-old"],
        [2.0],
        id="past",
    ),
    pytest.param(
        ValidateOp(type="validate", ranges=(RangeRule("soc", 0, 100),)),
        [(S, 1000, -1.0), (S, 2000, 50.0), (S, 3000, 100.5), (P, 1000, -5.0)],
        ["out-of-range", "out-of-range"],
        [50.0, -5.0],
        id="range",
    ),
    pytest.param(
        ValidateOp(type="validate", ranges=(RangeRule("soc", 0, None),)),
        [(S, 1000, 1e9)],
        [],
        [1e9],
        id="open-range",
    ),
    pytest.param(
        ValidateOp(type="validate"),
        [(P, 1000, 1.0), (P, 1000, 1.0), (P, 2000, 2.0)],
        ["duplicate"],
        [1.0, 2.0],
        id="duplicate-in-batch",
    ),
    pytest.param(
        ValidateOp(type="validate", dedupe=False),
        [(P, 1000, 1.0), (P, 1000, 1.0)],
        [],
        [1.0, 1.0],
        id="dedupe-off",
    ),
    pytest.param(
        ValidateOp(type="validate"),
        [(P, 1000, float("nan")), (P, 1000, 3.0)],
        ["non-finite"],
        [3.0],
        id="rejected-is-not-a-duplicate-source",
    ),
]


@pytest.mark.parametrize(("rules", "rows", "reasons", "values"), CASES)
def test_validation_table(rules, rows, reasons, values):
    res = Validator(rules).process(batch(rows))
    assert [d.reason.split(":")[0] for d in res.rejected] == reasons
    assert res.ok.value.tolist() == values
    for d in res.rejected:
        assert d.stage == "validate" and d.payload["path"] in (P.path, S.path)


def test_duplicate_across_batches():
    v = Validator(ValidateOp(type="validate"))
    v.process(batch([(P, 1000, 1.0), (P, 2000, 2.0)]))
    res = v.process(batch([(P, 2000, 2.0), (P, 3000, 3.0)]))
    assert [d.reason.split(":")[0] for d in res.rejected] == ["duplicate"]
    assert res.ok.ts_ms.tolist() == [3000]


def test_unit_conversion_rewrites_value_and_unit():
    rules = ValidateOp(type="validate", conversions=(UnitConversion("kW", "MW", 1e-3),))
    res = Validator(rules).process(batch([(P, 1000, 1500.0), (S, 1000, 50.0)]))
    assert res.ok.value.tolist() == [1.5, 50.0]
    assert [t.unit for t in res.ok.tags] == ["MW", "%"]


def test_zero_factor_conversion_is_refused():
    with pytest.raises(RuleError):
        Validator(ValidateOp(type="validate", conversions=(UnitConversion("kW", "MW", 0.0),)))


def test_stale_values_marked_uncertain_and_reported_once():
    v = Validator(ValidateOp(type="validate", stale_after_ms=3000, stale_tags="*power"))
    r1 = v.process(
        batch([(P, 0, 5.0), (P, 1000, 5.0), (P, 2000, 5.0), (S, 0, 1.0), (S, 5000, 1.0)])
    )
    assert r1.ok.quality.tolist() == [0, 0, 0, 0, 0] and r1.newly_stale == []
    r2 = v.process(batch([(P, 3000, 5.0), (P, 4000, 5.0)]))
    assert r2.ok.quality.tolist() == [1, 1]
    # Reported at the first stale point (not at the batch's last): batching cannot move it.
    assert [(t.path, ts) for t, ts in r2.newly_stale] == [(P.path, 3000)]
    r3 = v.process(batch([(P, 5000, 5.0)]))
    assert r3.ok.quality.tolist() == [1] and r3.newly_stale == []
    r4 = v.process(batch([(P, 6000, 6.0), (P, 7000, 6.0)]))
    assert r4.ok.quality.tolist() == [0, 0]


def test_counts_by_reason():
    v = Validator(ValidateOp(type="validate"))
    v.process(batch([(P, 1000, float("nan")), (P, 2000, 1.0, Quality.BAD)]))
    assert v.counts == {"non-finite": 1, "quality": 1}


def test_accepted_order_is_preserved():
    rows = [(P, t, float(t)) for t in (5000, 1000, 3000)]
    res = Validator(ValidateOp(type="validate")).process(batch(rows))
    assert res.ok.ts_ms.tolist() == [5000, 1000, 3000]
    assert np.array_equal(res.ok.value, [5000.0, 1000.0, 3000.0])


@pytest.mark.parametrize(
    ("value", "numeric", "text", "dead"),
    [
        (12.5, [12.5], [], []),
        (True, [1.0], [], []),
        (" 42 ", [42.0], [], []),
        ("1e3", [1000.0], [], []),
        ("12,5", [], [], ["type"]),
        ("n/a", [], [], ["type"]),
    ],
)
def test_coerce_points(value, numeric, text, dead):
    from wire.records import Isa95, Point, coerce_points

    p = Point(1000, Isa95("e", "s", "a", "l", "m"), "power", value, unit="kW")
    batch, texts, letters = coerce_points([p], source="mqtt")
    assert batch.value.tolist() == numeric
    assert [t.value for t in texts] == text
    assert [d.reason.split(":")[0] for d in letters] == dead


def test_coerce_keeps_declared_text_tags():
    from wire.records import Isa95, Point, coerce_points

    ctx = Isa95("e", "s", "a", "l", "m")
    pts = [Point(1, ctx, "mode", "RUNNING"), Point(1, ctx, "power", "5")]
    batch, texts, letters = coerce_points(pts, text_tags="mode")
    assert [t.tag for t in texts] == ["mode"] and batch.value.tolist() == [5.0] and letters == []


@pytest.mark.parametrize(
    ("points", "uncertain", "episodes"),
    [
        pytest.param(
            [(0, 5.0), (1000, 5.0), (3000, 5.0)], [3000], [(3000, "raised")], id="in-order"
        ),
        # A delayed point of the same value arrives after newer ones: it neither starts a new
        # run nor counts back in time.
        pytest.param(
            [(0, 5.0), (3000, 5.0), (1000, 5.0), (4000, 5.0)],
            [3000, 4000],
            [(3000, "raised")],
            id="delayed",
        ),
        # A delayed different value breaks the run where it arrives.
        pytest.param(
            [(0, 5.0), (3000, 5.0), (1000, 7.0), (4000, 5.0)],
            [3000],
            [(3000, "raised"), (1000, "cleared")],
            id="broken",
        ),
        pytest.param(
            [(0, 5.0), (3000, 5.0), (3500, 6.0), (6500, 6.0)],
            [3000, 6500],
            [(3000, "raised"), (3500, "cleared"), (6500, "raised")],
            id="raised-twice",
        ),
    ],
)
@pytest.mark.parametrize("cut", [1, 2, 3, 4])
def test_stale_depends_on_arrival_order_not_on_batching(points, uncertain, episodes, cut):
    v = Validator(ValidateOp(type="validate", stale_after_ms=3000, stale_tags="*power"))
    got_uncertain: list[int] = []
    got_episodes: list[tuple[int, str]] = []
    for k in range(0, len(points), cut):
        part = points[k : k + cut]
        r = v.process(batch([(P, ts, x) for ts, x in part]))
        got_uncertain += [ts for (ts, _), q in zip(part, r.ok.quality.tolist(), strict=True) if q]
        got_episodes += [(ts, "raised") for _, ts in r.newly_stale]
        got_episodes += [(ts, "cleared") for _, ts in r.stale_cleared]
    # Events are keyed by time: their order within one batch is not a result.
    assert (got_uncertain, sorted(got_episodes)) == (uncertain, sorted(episodes))


@pytest.mark.parametrize(
    ("options", "values", "uncertain", "episodes"),
    [
        pytest.param(
            {"stale_tolerance": 0.05},
            [5.0, 5.02, 4.99, 5.03, 5.2, 5.2],
            [3000],
            [(3000, "raised"), (4000, "cleared")],
            id="absolute-tolerance",
        ),
        pytest.param(
            {"stale_tolerance": 0.01, "stale_relative": True},
            [500.0, 503.0, 498.0, 501.0, 520.0],
            [3000],
            [(3000, "raised"), (4000, "cleared")],
            id="relative-tolerance",
        ),
        pytest.param(
            {"stale_ignore_values": (0.0,)},
            [0.0, 0.0, 0.0, 0.0, 0.0, 3.0],
            [],
            [],
            id="night-zeros-ignored",
        ),
        pytest.param(
            {"stale_ignore_below": 1.0},
            [0.2, 0.2, 0.2, 0.2, 7.0, 7.0, 7.0, 7.0],
            [7000],
            [(7000, "raised")],
            id="below-ignored-but-frozen-day-value-caught",
        ),
    ],
)
def test_stale_tolerance_and_ignored_values(options, values, uncertain, episodes):
    v = Validator(ValidateOp(type="validate", stale_after_ms=3000, stale_tags="*power", **options))
    r = v.process(batch([(P, i * 1000, x) for i, x in enumerate(values)]))
    got = [i * 1000 for i, q in enumerate(r.ok.quality.tolist()) if q]
    eps = [(ts, "raised") for _, ts in r.newly_stale] + [
        (ts, "cleared") for _, ts in r.stale_cleared
    ]
    assert (got, sorted(eps)) == (uncertain, sorted(episodes))


def test_stale_gated_on_the_sun_ignores_night_readings():
    """A PV meter frozen through a night and into the morning: stale only once the sun is up."""
    from operators.errors import RuleError

    # 47.6 N 50.4 W, 2026-06-01: the sun passes 5 degrees at 08:08:50 UTC.
    t0 = 1_780_300_800_000  # 08:00 UTC
    rows = [(P, t0 + i * 60_000, 12.5) for i in range(20)]  # frozen 08:00-08:19
    opts = {"type": "validate", "max_future_ms": None, "max_past_ms": None}
    opts |= {"stale_after_ms": 180_000, "stale_tags": "*power"}
    plain = Validator(ValidateOp(**opts)).process(batch(rows, received_ms=t0))
    gated = Validator(ValidateOp(**opts, stale_sun_above_deg=5), location=(47.6, -50.4))
    res = gated.process(batch(rows, received_ms=t0))
    assert [(ts - t0) // 60_000 for _, ts in plain.newly_stale] == [3]
    assert [(ts - t0) // 60_000 for _, ts in res.newly_stale] == [9]  # first daylight minute
    with pytest.raises(RuleError, match=r"stale_sun_above_deg .*site\.latitude"):
        Validator(ValidateOp(**opts, stale_sun_above_deg=5))
