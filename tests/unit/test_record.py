from datetime import UTC, datetime, timedelta, timezone

import numpy as np
import pytest

from wire.errors import RecordError
from wire.records import (
    DeadLetter,
    Isa95,
    Point,
    PointBatch,
    Quality,
    TagRef,
    ms_to_iso,
    to_ms,
)

CTX = Isa95("acme", "plant", "pv", "array-1", "inv-01")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (datetime(2026, 1, 1, tzinfo=UTC), 1767225600000),
        (datetime(2026, 1, 1, 1, tzinfo=timezone(timedelta(hours=1))), 1767225600000),
        ("2026-01-01T00:00:00Z", 1767225600000),
        ("2026-01-01T00:00:00.250+00:00", 1767225600250),
        (1767225600000, 1767225600000),
        (1767225600000.4, 1767225600000),
    ],
)
def test_to_ms_accepts_aware_times(raw, expected):
    assert to_ms(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [datetime(2026, 1, 1), "2026-01-01T00:00:00", "yesterday", float("nan"), True],  # noqa: DTZ001
)
def test_to_ms_rejects_naive_or_garbage(raw):
    with pytest.raises(RecordError):
        to_ms(raw)


def test_ms_to_iso_is_utc_millis():
    assert ms_to_iso(1767225600250) == "2026-01-01T00:00:00.250Z"


@pytest.mark.parametrize(
    ("raw", "q"),
    [
        ("GOOD", Quality.GOOD),
        ("uncertain", Quality.UNCERTAIN),
        (2, Quality.BAD),
        (Quality.BAD, Quality.BAD),
    ],
)
def test_quality_parse(raw, q):
    assert Quality.parse(raw) is q


@pytest.mark.parametrize("raw", ["SO-SO", 7, 1.5, None])
def test_quality_parse_rejects(raw):
    with pytest.raises(RecordError):
        Quality.parse(raw)


@pytest.mark.parametrize(
    "levels",
    [("", "s", "a", "l", "m"), ("e", "s/x", "a", "l", "m"), ("e", "s", " a", "l", "m")],
)
def test_isa95_rejects_bad_levels(levels):
    with pytest.raises(RecordError):
        Isa95(*levels)


def test_point_path_and_roundtrip():
    p = Point(1767225600000, CTX, "ac_power", 12, unit="kW", source="sim")
    assert p.value == 12.0 and isinstance(p.value, float)
    assert p.path == "acme/plant/pv/array-1/inv-01/ac_power"
    assert p.ref == TagRef(p.path, "kW")
    assert p.ref.context == CTX and p.ref.tag == "ac_power"
    d = p.to_dict()
    assert d["ts"] == "2026-01-01T00:00:00.000Z" and d["quality"] == "GOOD"
    assert Point.from_dict(d) == p


def test_point_from_dict_names_missing_field():
    d = Point(0, CTX, "x", 1.0).to_dict()
    del d["area"]
    with pytest.raises(RecordError, match="'area'"):
        Point.from_dict(d)


@pytest.mark.parametrize("value", [None, [1], {"a": 1}])
def test_point_rejects_bad_value_types(value):
    with pytest.raises(RecordError):
        Point(0, CTX, "x", value)


def test_point_rejects_float_timestamp():
    with pytest.raises(RecordError):
        Point(1.5, CTX, "x", 1.0)  # type: ignore[arg-type]


def test_batch_roundtrip_keeps_strings_aside():
    pts = [
        Point(1000, CTX, "p", 1.5, unit="kW"),
        Point(1000, CTX, "mode", "RUN"),
        Point(2000, CTX, "p", 2.5, unit="kW", quality=Quality.UNCERTAIN),
        Point(2000, CTX, "on", True),
    ]
    batch, others = PointBatch.from_points(pts, source="s", received_ms=5000)
    assert [o.tag for o in others] == ["mode"]
    assert len(batch) == 3 and len(batch.tags) == 2
    back = batch.to_points()
    assert [(p.tag, p.value, p.quality) for p in back] == [
        ("p", 1.5, Quality.GOOD),
        ("p", 2.5, Quality.UNCERTAIN),
        ("on", 1.0, Quality.GOOD),
    ]
    assert batch.received_ms == 5000


def test_batch_rejects_mismatched_columns_and_bad_index():
    t = (TagRef("a/b/c/d/e/f"),)
    with pytest.raises(RecordError, match="differ"):
        PointBatch(t, [0, 0], [1], [1.0], [0])
    with pytest.raises(RecordError, match="out of range"):
        PointBatch(t, [1], [1], [1.0], [0])


def test_batch_concat_unifies_tag_tables():
    a = TagRef("e/s/a/l/m/x", "kW")
    b = TagRef("e/s/a/l/m/y", "kW")
    b1 = PointBatch((a, b), [0, 1], [1, 1], [1.0, 2.0], [0, 0])
    b2 = PointBatch((b,), [0], [2], [3.0], [0])
    c = PointBatch.concat([b1, b2])
    assert c.tags == (a, b)
    assert c.tag_idx.tolist() == [0, 1, 1]
    assert c.value.tolist() == [1.0, 2.0, 3.0]
    assert len(PointBatch.concat([])) == 0


def test_batch_select():
    a = TagRef("e/s/a/l/m/x")
    b = PointBatch((a,), [0, 0, 0], [1, 2, 3], [1.0, 2.0, 3.0], [0, 1, 2])
    s = b.select(np.array([True, False, True]))
    assert s.ts_ms.tolist() == [1, 3] and s.quality.tolist() == [0, 2]


def test_dead_letter_hexes_bytes():
    d = DeadLetter("mqtt", "malformed JSON", b"\x00\xff", ts_ms=0).to_dict()
    assert d["payload"] == {"hex": "00ff"} and d["reason"] == "malformed JSON"
