import numpy as np
import pytest

from operators.alarm.logic import AlarmEngine, AlarmRule, hysteresis
from operators.errors import RuleError
from tests.unit.points import batch_at
from wire.records import PointBatch, TagRef

T1 = TagRef("e/s/pv/a1/inv-01/temperature", "C")
T2 = TagRef("e/s/pv/a2/inv-02/temperature", "C")
SOC = TagRef("e/s/storage/bess/b1/soc", "%")
HIGH = AlarmRule("over-temp", "*/pv/*/temperature", limit=85, deadband=5)
LOW = AlarmRule("low-soc", "soc", limit=10, deadband=5, direction="low", severity="minor")


def batch(rows):
    return batch_at(0, rows)


def run(rule, values, tag=T1):
    eng = AlarmEngine((rule,))
    return [
        (e.state, e.ts_ms) for e in eng.process(batch([(tag, i, v) for i, v in enumerate(values)]))
    ]


@pytest.mark.parametrize(
    ("rule", "values", "expected", "tag"),
    [
        (HIGH, [70, 80, 84.9], [], T1),
        (HIGH, [70, 86, 90, 88], [("raised", 1)], T1),
        (HIGH, [86, 84, 86, 84, 86, 81], [("raised", 0)], T1),  # hovering: no storm
        (HIGH, [86, 84, 80, 86], [("raised", 0), ("cleared", 2), ("raised", 3)], T1),
        (HIGH, [85, 85], [], T1),  # strictly above the limit
        (LOW, [50, 9, 12, 14, 15], [("raised", 1), ("cleared", 4)], SOC),
        (LOW, [50, 9, 12, 14, 15], [], T1),  # rule does not match the tag
    ],
)
def test_hysteresis_table(rule, values, expected, tag):
    assert run(rule, values, tag) == expected


def test_state_survives_batches_and_tags_are_independent():
    eng = AlarmEngine((HIGH,))
    e1 = eng.process(batch([(T1, 0, 90.0), (T2, 0, 70.0)]))
    assert [(e.path, e.state) for e in e1] == [(T1.path, "raised")]
    assert eng.active() == {"over-temp": {T1.path}}
    assert eng.process(batch([(T1, 1, 83.0), (T2, 1, 86.0)]))[0].path == T2.path
    e3 = eng.process(batch([(T1, 2, 79.0)]))
    assert [(e.path, e.state) for e in e3] == [(T1.path, "cleared")]
    assert "back to 79 C" in e3[0].message


@pytest.mark.parametrize(
    ("rows", "expected", "skipped"),
    [
        # Points older than their tag's newest are skipped, in one batch as across batches.
        ([(2, 70.0), (1, 90.0), (0, 70.0)], [], 2),
        ([(0, 70.0), (2, 90.0), (1, 70.0), (3, 70.0)], [("raised", 2), ("cleared", 3)], 1),
    ],
)
def test_points_are_judged_per_tag_in_arrival_order_whatever_the_batching(rows, expected, skipped):
    whole = AlarmEngine((HIGH,))
    assert [(e.state, e.ts_ms) for e in whole.process(batch([(T1, *r) for r in rows]))] == expected
    assert whole.skipped.get(HIGH.id, 0) == skipped
    one_by_one = AlarmEngine((HIGH,))
    got = [e for r in rows for e in one_by_one.process(batch([(T1, *r)]))]
    assert [(e.state, e.ts_ms) for e in got] == expected


def test_hysteresis_kernel_both_set_and_reset_counts_as_set():
    v = np.zeros(3)
    state = hysteresis(
        v,
        np.array([True, False, False]),
        np.array([False]),
        set_mask=np.array([False, True, False]),
        reset_mask=np.array([False, True, True]),
    )
    assert state.tolist() == [False, True, False]


def test_negative_deadband_refused():
    with pytest.raises(RuleError):
        AlarmRule("x", "*", limit=1, deadband=-1)


def test_historical_values_never_raise_live_alarms():
    import numpy as np

    from wire.records import TagRef

    ref = TagRef("e/s/a/l/m/temp", "C")
    batch = PointBatch(
        (ref,),
        np.zeros(3, np.int32),
        np.array([1000, 2000, 3000]),
        np.array([99.0, 99.0, 50.0]),
        np.zeros(3, np.uint8),
        extra={"historical": np.array([True, True, False])},
    )
    engine = AlarmEngine((AlarmRule("hot", "temp", limit=85),))
    assert engine.process(batch) == []  # the backfilled 99 C is stored, not alarmed on
    live = PointBatch(
        (ref,), np.zeros(1, np.int32), np.array([4000]), np.array([99.0]), np.zeros(1, np.uint8)
    )
    assert [e.state for e in engine.process(live)] == ["raised"]
