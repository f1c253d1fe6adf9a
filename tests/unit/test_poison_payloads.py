"""No payload can crash an input: every decoder turns any bytes into samples or a reason.

Property-based (hypothesis) over arbitrary bytes and arbitrary JSON documents, plus the
payloads that crashed flows in the field.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.mqtt.payloads import MAX_TS_MS, PayloadError, parse_plain
from connectors.mqtt.sparkplug import SparkplugState
from flows.streams import rows_of
from wire.points import PointsDecoder
from wire.records import PointBatch, TagRef
from wire.sparkplug.sparkplug_b_pb2 import Payload

FIELD_CRASHES = [
    b'{"value": 1, "ts_ms": null}',
    b'{"value": Infinity}',
    b"Infinity",
    b'{"value": 1, "ts_ms": 1e20}',
    b'{"value": 1' + b"0" * 400 + b"}",
    b"1" + b"0" * 400,
    b"[" * 100_000 + b"]" * 100_000,
    b'{"value": 1, "timestamp": [2026]}',
    b'{"value": 1, "timestamp": "2026-13-45T99:00:00Z"}',
    b'{"value": 1, "ts_ms": -5}',
    b'{"value": 1, "ts_ms": true}',
    b'{"value": {"nested": 1}}',
    b'{"value": 1, "quality": "SHINY"}',
    b'{"value": 1, "quality": 7}',
    b"\xff\xfe\x00",
    b"",
]


def _check_plain(payload: bytes, kind: str) -> None:
    try:
        value, quality, ts = parse_plain(payload, kind, 1_000)
    except PayloadError:
        return
    assert isinstance(value, float) and np.isfinite(value)
    assert quality in (0, 1, 2) and 0 <= ts < MAX_TS_MS


@pytest.mark.parametrize("payload", FIELD_CRASHES)
@pytest.mark.parametrize("kind", ["json", "number"])
def test_payloads_that_crashed_flows_are_reasons_now(payload, kind):
    _check_plain(payload, kind)


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=200), st.sampled_from(["json", "number"]))
def test_any_bytes_are_a_sample_or_a_reason(payload, kind):
    _check_plain(payload, kind)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=2000, deadline=None)
@given(
    st.fixed_dictionaries(
        {"value": json_values},
        optional={"ts_ms": json_values, "timestamp": json_values, "quality": json_values},
    )
)
def test_any_json_object_is_a_sample_or_a_reason(doc):
    _check_plain(json.dumps(doc).encode(), "json")


@settings(max_examples=1500, deadline=None)
@given(st.binary(max_size=300))
def test_any_sparkplug_bytes_are_points_or_dead_letters(payload):
    s = SparkplugState(enterprise="e", site="s")
    for topic in ("spBv1.0/g/NBIRTH/n", "spBv1.0/g/NDATA/n", "spBv1.0/g/DDEATH/n/d"):
        samples, _dead, _, _ = s.handle(topic, payload, 1_000)
        for p in samples:
            assert 0 <= p[2] < MAX_TS_MS
        # The property is that handle() returns (never raises) with sane timestamps.


@settings(max_examples=500, deadline=None)
@given(
    st.lists(
        st.fixed_dictionaries(
            {
                "name": st.text(max_size=6),
                "alias": st.integers(0, 2**64 - 1),
                "timestamp": st.integers(0, 2**64 - 1),
                "datatype": st.integers(0, 2**32 - 1),
                "long": st.integers(0, 2**64 - 1),
            }
        ),
        max_size=5,
    ),
    st.integers(0, 2**64 - 1),
)
def test_structurally_valid_sparkplug_with_extreme_fields(metrics, ts):
    p = Payload()
    p.timestamp = ts
    p.seq = 0
    for m in metrics:
        pm = p.metrics.add()
        pm.name, pm.alias, pm.timestamp = m["name"], m["alias"], m["timestamp"]
        pm.datatype, pm.long_value = m["datatype"], m["long"]
    s = SparkplugState(enterprise="e", site="s")
    samples, dead, _, _ = s.handle("spBv1.0/g/NBIRTH/n", p.SerializeToString(), 1_000)
    # Each message has an outcome: its metrics as samples or dead letters, or one dead letter
    # for the whole message (e.g. an impossible payload timestamp).
    named = [m for m in metrics if m["name"] != "bdSeq"]
    assert len(samples) + len(dead) >= min(1, len(named))
    for sample in samples:
        assert 0 <= sample[2] < MAX_TS_MS
        assert isinstance(sample[3], str) or abs(sample[3]) <= 2**53


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.tuples(st.binary(max_size=30), st.binary(max_size=80)), max_size=6))
def test_any_kafka_points_message_decodes_or_is_a_dead_letter(messages):
    d = PointsDecoder().decode([k for k, _ in messages], [v for _, v in messages])
    decoded = len(set(d.message.tolist()))
    assert decoded + len(d.errors) <= len(messages)  # empty messages decode to no points
    assert len(d.ts_ms) == len(d.value) == len(d.quality) == len(d.tag_idx) == len(d.message)


def test_point_rows_carry_sparkplug_flags():
    batch = PointBatch(
        (TagRef("e/s/a/l/m/t", "kW"),),
        np.zeros(2, np.int32),
        np.array([1, 2]),
        np.array([1.0, 2.0]),
        np.zeros(2, np.uint8),
        extra={"historical": np.array([True, False]), "transient": np.array([False, True])},
    )
    rows = rows_of("raw", batch)
    assert [(r.get("historical"), r.get("transient")) for r in rows] == [(True, None), (None, True)]
