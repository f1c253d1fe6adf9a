"""The points wire format, checked against bytes built from its specification (not by the
encoder under test), and the decoder's behaviour on every kind of message."""

import json
import struct

import numpy as np

from wire.points import PointsDecoder, encode_batch, encode_messages
from wire.records import PointBatch, TagRef

TAGS = (TagRef("e/s/a/l/m/p", "kW"), TagRef("e/s/a/l/m/t", "°C"))


def spec_efp2(tags, idx, ts, val, q, flags=()) -> bytes:
    """EFP2 as the module docstring specifies it, written by hand."""
    out = b"EFP2" + struct.pack("<I", len(tags))
    for path, unit in tags:
        p, u = path.encode(), unit.encode()
        out += struct.pack("<H", len(p)) + p + struct.pack("<H", len(u)) + u
    n = len(ts)
    out += struct.pack("<I", n)
    out += struct.pack(f"<{n}I", *idx) + struct.pack(f"<{n}q", *ts)
    out += struct.pack(f"<{n}d", *val) + bytes(q)
    mask = sum(1 << k for k, (name, _) in enumerate(flags))
    out += bytes([mask]) + b"".join(bytes(v) for _, v in flags)
    return out


def batch(**extra) -> PointBatch:
    return PointBatch(
        TAGS,
        [0, 1, 0, 1, 0],
        [1, 2, 3, 4, 5],
        [1.5, -2.0, np.nan, 4.0, 5.5],
        [0, 1, 2, 0, 0],
        extra=extra,
    )


# The columns of batch(), written out for the specification's encoder.
SPEC_COLUMNS = (
    [("e/s/a/l/m/p", "kW"), ("e/s/a/l/m/t", "°C")],
    [0, 1, 0, 1, 0],
    [1, 2, 3, 4, 5],
    [1.5, -2.0, float("nan"), 4.0, 5.5],
    [0, 1, 2, 0, 0],
)


def test_the_binary_encoding_is_the_specified_bytes():
    assert encode_batch(batch()) == spec_efp2(*SPEC_COLUMNS)


def test_flags_are_encoded_as_specified():
    hist = np.array([True, False, False, True, False])
    want = spec_efp2(*SPEC_COLUMNS, flags=[("historical", [1, 0, 0, 1, 0])])
    assert encode_batch(batch(historical=hist)) == want


def test_decoding_hand_written_messages_of_every_format():
    v2 = spec_efp2([("e/s/a/l/m/p", "kW")], [0, 0], [10, 20], [1.0, 2.0], [0, 1])
    v1 = b"EFP1" + struct.pack("<H", 2) + b"kW" + struct.pack("<I", 1)
    v1 += struct.pack("<q", 30) + struct.pack("<d", 3.0) + bytes([0])
    js_batch = json.dumps(
        {
            "tags": [["e/s/a/l/m/t", "C"]],
            "tag_idx": [0],
            "ts_ms": [40],
            "value": [4.0],
            "quality": [0],
            "transient": [True],
        }
    ).encode()
    js_v1 = json.dumps({"path": "e/s/a/l/m/p", "unit": "kW", "ts_ms": [50], "value": [5.0]})
    keys = [b"e/s", b"e/s/a/l/m/p", b"e/s", b"e/s/a/l/m/p", b"x", None, b"k"]
    values = [v2, v1, js_batch, js_v1.encode(), b"EFP2\x01", b"{}", v2[:-1]]
    d = PointsDecoder().decode(keys, values)
    assert [i for i, _ in d.errors] == [4, 5, 6]
    assert [(d.tags[t].path, d.tags[t].unit) for t in d.tag_idx.tolist()] == [
        ("e/s/a/l/m/p", "kW"),
        ("e/s/a/l/m/p", "kW"),
        ("e/s/a/l/m/p", "kW"),
        ("e/s/a/l/m/t", "C"),
        ("e/s/a/l/m/p", "kW"),
    ]
    assert d.ts_ms.tolist() == [10, 20, 30, 40, 50]
    assert d.value.tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert d.quality.tolist() == [0, 1, 0, 0, 0]
    assert d.message.tolist() == [0, 0, 1, 2, 3]
    assert d.flags["transient"].tolist() == [False, False, False, True, False]


def test_times_outside_the_representable_range_are_dead_letters():
    bad = spec_efp2([("e/s/a/l/m/p", "kW")], [0], [1 << 62], [1.0], [0])
    d = PointsDecoder().decode([b"k"], [bad])
    assert len(d) == 0 and "outside 1970..2248" in d.errors[0][1]


def test_messages_are_split_by_shard_and_size():
    tags = (TagRef("e/s1/a/l/m/p", "kW"), TagRef("e/s2/a/l/m/p", "kW"))
    b = PointBatch(tags, [0, 1, 0, 0, 1], [1, 2, 3, 4, 5], [1.0] * 5, [0] * 5)
    msgs = encode_messages(b, max_points=2)
    assert [(k, ts) for k, _, ts in msgs] == [("e/s1", 3), ("e/s1", 4), ("e/s2", 5)]
    d = PointsDecoder().decode([k.encode() for k, _, _ in msgs], [v for _, v, _ in msgs])
    assert d.ts_ms.tolist() == [1, 3, 4, 2, 5]
    by_machine = encode_messages(b, shard_levels=5)
    assert [k for k, _, _ in by_machine] == ["e/s1/a/l/m", "e/s2/a/l/m"]
