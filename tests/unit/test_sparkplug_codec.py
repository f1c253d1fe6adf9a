import json
from pathlib import Path

import pytest

from wire.sparkplug.codec import SparkplugError, decode, encode

VECTORS = json.loads(
    (Path(__file__).parents[1] / "fixtures" / "sparkplug" / "tahu_vectors.json").read_text()
)


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_decodes_payloads_encoded_by_eclipse_tahu_js(vector):
    p = decode(bytes.fromhex(vector["hex"]))
    assert p.seq == 7 and p.timestamp == 1767225600000
    (m,) = p.metrics
    assert m.name == vector["name"] and m.alias == 42 and m.timestamp == 1767225601000
    assert m.value == vector["value"]


@pytest.mark.parametrize(
    ("dtype", "value"),
    [
        ("Int8", -128),
        ("Int16", -2),
        ("Int32", -7),
        ("Int64", -(2**62)),
        ("UInt32", 2**32 - 1),
        ("UInt64", 2**63),
        ("Float", 0.5),
        ("Double", 1e300),
        ("Boolean", False),
        ("String", "x"),
        ("Bytes", b"\x00\x01"),
    ],
)
def test_roundtrip(dtype, value):
    (m,) = decode(encode([("m", 1, dtype, value)], seq=0, timestamp=5)).metrics
    assert m.value == value


def test_null_metric():
    (m,) = decode(encode([("m", None, "Double", None)], seq=1, timestamp=5)).metrics
    assert m.is_null and m.value is None and m.alias is None


def test_malformed_bytes():
    with pytest.raises(SparkplugError, match="malformed"):
        decode(b"\x0a\xff\xff")
