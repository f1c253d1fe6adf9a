import numpy as np
import pytest

from operators.errors import RuleError
from operators.validate.coalesce import Coalescer
from operators.validate.config import ValidateOp
from operators.validate.logic import Validator
from wire.records import PointBatch, TagRef

TAGS = (TagRef("e/s/a/l/m/p", "kW"), TagRef("e/s/a/l/m/q", "kW"))
OTHER = (TagRef("e/s/a/l/m/r", "kW"),)


def b(n, *, ts=1000, source="s", tags=TAGS, received_ms=5000):
    return PointBatch(
        tags,
        np.zeros(n, np.int32),
        np.full(n, ts, np.int64),
        np.arange(n, dtype=np.float64),
        np.zeros(n, np.uint8),
        source=source,
        received_ms=received_ms,
    )


# Table: (batch sizes, sources, wall times) -> sizes of the batches that leave, in order.
@pytest.mark.parametrize(
    ("arrivals", "expected"),
    [
        pytest.param([(3, "s", 0), (3, "s", 10)], [], id="waits-below-limits"),
        pytest.param([(6, "s", 0), (5, "s", 10)], [11], id="max-points"),
        pytest.param([(3, "s", 0), (3, "s", 150)], [6], id="max-delay"),
        pytest.param([(3, "s", 0), (3, "t", 10)], [3], id="other-source-flushes"),
        pytest.param([(20, "s", 0)], [20], id="big-batch-passes-at-once"),
    ],
)
def test_coalescing_table(arrivals, expected):
    c = Coalescer(max_points=10, max_delay_ms=100)
    out = []
    for n, source, now in arrivals:
        out += c.add(b(n, source=source), now)
    assert [len(x) for x in out] == expected


def test_another_tag_table_is_not_merged():
    c = Coalescer(max_points=10, max_delay_ms=100)
    assert c.add(b(3), 0) == []
    (first,) = c.add(b(3, tags=OTHER), 1)
    assert first.tags is TAGS and len(first) == 3
    (rest,) = c.take()
    assert rest.tags is OTHER


def test_due_time_and_end_of_input():
    c = Coalescer(max_points=10, max_delay_ms=100)
    assert c.due_ms() is None
    c.add(b(3), 40)
    assert c.due_ms() == 140 and c.poll(139) == []
    (out,) = c.take()
    assert len(out) == 3 and c.take() == [] and c.due_ms() is None


def test_merged_batch_keeps_order_and_each_points_receive_time():
    c = Coalescer(max_points=4, max_delay_ms=100)
    c.add(b(2, received_ms=1000), 0)
    (out,) = c.add(b(2, received_ms=2000), 0)
    assert out.value.tolist() == [0.0, 1.0, 0.0, 1.0]
    assert out.received_ms == 2000
    assert out.extra["received_ms"].tolist() == [1000, 1000, 2000, 2000]
    assert out.select(np.array([False, True, True, False])).extra["received_ms"].tolist() == [
        1000,
        2000,
    ]


def test_validation_of_a_merged_batch_uses_each_points_receive_time():
    rules = ValidateOp(type="validate", max_future_ms=500, max_past_ms=None)
    early = b(1, ts=1400, received_ms=1000)  # 400 ms ahead of its receive time: fine
    late = b(1, ts=1400, received_ms=800)  # 600 ms ahead: clock skew
    merged = PointBatch.concat([early, late])
    res = Validator(rules).process(merged)
    assert len(res.ok) == 1 and len(res.rejected) == 1
    assert "clock-skew" in res.rejected[0].reason and "0.6s ahead" in res.rejected[0].reason


@pytest.mark.parametrize(("points", "delay"), [(0, 10), (10, -1)])
def test_bad_limits(points, delay):
    with pytest.raises(RuleError):
        Coalescer(max_points=points, max_delay_ms=delay)


SITES = (
    TagRef("acme/north/pv/l1/inv-1/p", "kW"),
    TagRef("acme/south/pv/l1/inv-1/p", "kW"),
    TagRef("acme/north/pv/l2/inv-2/p", "kW"),
    TagRef("acme/south/grid/poc/meter/f", "Hz"),
)


@pytest.mark.parametrize(
    ("levels", "shards"),
    [
        (2, {"acme/north": ["p@1", "p@3"], "acme/south": ["p@2", "f@4"]}),
        (
            4,
            {
                "acme/north/pv/l1": ["p@1"],
                "acme/south/pv/l1": ["p@2"],
                "acme/north/pv/l2": ["p@3"],
                "acme/south/grid/poc": ["f@4"],
            },
        ),
    ],
)
def test_a_batch_splits_into_shards_that_carry_only_their_own_tags(levels, shards):
    from flows.build import shard_batches

    batch = PointBatch(
        SITES,
        np.array([0, 1, 2, 3], np.int32),
        np.array([1, 2, 3, 4], np.int64),
        np.array([1.0, 2.0, 3.0, 4.0]),
        np.zeros(4, np.uint8),
        source="k:0",
        received_ms=9,
    )
    parts = shard_batches(batch, levels)
    got = {
        key: [
            f"{part.tags[i].path.rsplit('/', 1)[1]}@{t}"
            for i, t in zip(part.tag_idx, part.ts_ms, strict=True)
        ]
        for key, part in parts
    }
    assert got == shards
    for key, part in parts:
        assert all(t.path.startswith(key + "/") for t in part.tags)
        assert (part.source, part.received_ms) == ("k:0", 9)
