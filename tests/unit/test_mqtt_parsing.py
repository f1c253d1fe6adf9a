import pytest

from connectors.errors import SourceError
from connectors.mqtt.config import TopicTemplate
from connectors.mqtt.payloads import parse_plain
from connectors.mqtt.sparkplug import SparkplugState
from wire.sparkplug.codec import encode

T = TopicTemplate("plant/{area}/{line}/{machine}/{tag}")


@pytest.mark.parametrize(
    ("topic", "fields"),
    [
        (
            "plant/pv/a1/inv-01/ac_power",
            {"area": "pv", "line": "a1", "machine": "inv-01", "tag": "ac_power"},
        ),
        ("plant/pv/a1/inv-01", None),
        ("other/pv/a1/inv-01/x", None),
        ("plant/pv//inv-01/x", None),
    ],
)
def test_template_match(topic, fields):
    assert T.match(topic) == fields
    assert T.subscription == "plant/+/+/+/+"


def test_template_needs_tag_and_known_fields():
    with pytest.raises(SourceError):
        TopicTemplate("plant/{area}/{colour}")


@pytest.mark.parametrize(
    ("payload", "kind", "expected"),
    [
        (b"12.5", "number", (12.5, 0, 1000)),
        (b" 7 ", "json", (7.0, 0, 1000)),
        (b'{"value": 3, "quality": "UNCERTAIN", "ts_ms": 5}', "json", (3.0, 1, 5)),
        (b'{"value": true, "timestamp": "1970-01-01T00:00:01Z"}', "json", (1.0, 0, 1000)),
    ],
)
def test_parse_plain(payload, kind, expected):
    assert parse_plain(payload, kind, 1000) == expected


@pytest.mark.parametrize(
    "payload",
    [
        b"abc",
        b'{"value": "x"}',
        b'{"v": 1}',
        b"NaN",
        b'{"value": 1, "timestamp": "2026-01-01T00:00:00"}',
        b"\xff",
    ],
)
def test_parse_plain_rejects(payload):
    with pytest.raises((ValueError, UnicodeDecodeError)):
        parse_plain(payload, "json", 0)


def birth(seq=0):
    return encode(
        [("Inverter/ACPower", 1, "Double", 50.0), ("Inverter/Temp", 2, "Int16", -3)],
        seq=seq,
        timestamp=1000,
    )


def data(seq, metrics):
    return encode(metrics, seq=seq, timestamp=2000)


def test_birth_data_and_aliases():
    s = SparkplugState(enterprise="acme", site="s1")
    pts, dead, _, reb = s.handle("spBv1.0/g1/NBIRTH/edge1", birth(), 1000)
    assert sorted(p[0] for p in pts) == [
        "acme/s1/g1/edge1/node/Inverter.ACPower",
        "acme/s1/g1/edge1/node/Inverter.Temp",
    ]
    assert [p[3] for p in pts if p[0].endswith("Temp")] == [-3.0]
    pts, dead, _ev, reb = s.handle(
        "spBv1.0/g1/NDATA/edge1", data(1, [(None, 1, "Double", 55.5)]), 2000
    )
    assert [(p[0].rsplit("/", 1)[1], p[3]) for p in pts] == [("Inverter.ACPower", 55.5)]
    assert dead == [] and reb == []


def test_device_birth_and_death_mark_stale():
    s = SparkplugState(enterprise="acme", site="s1")
    s.handle("spBv1.0/g1/NBIRTH/edge1", birth(), 1000)
    s.handle(
        "spBv1.0/g1/DBIRTH/edge1/meter",
        encode([("kW", 10, "Float", 1.0)], seq=1, timestamp=1),
        1000,
    )
    _, _, ev, _ = s.handle("spBv1.0/g1/DDEATH/edge1/meter", encode([], seq=2, timestamp=1), 3000)
    assert [(e.kind, e.path) for e in ev] == [("stale", "acme/s1/g1/edge1/meter/kW")]
    _, _, ev, _ = s.handle("spBv1.0/g1/NDEATH/edge1", b"", 4000)
    assert len(ev) == 3


def test_seq_gap_and_unknown_alias_request_rebirth_once():
    s = SparkplugState(enterprise="acme", site="s1", rebirth_min_interval_ms=10_000)
    s.handle("spBv1.0/g1/NBIRTH/edge1", birth(), 1000)
    _, _, _, reb = s.handle("spBv1.0/g1/NDATA/edge1", data(5, [(None, 1, "Double", 1.0)]), 2000)
    assert reb == ["spBv1.0/g1/NCMD/edge1"]
    _, dead, _, reb = s.handle("spBv1.0/g1/NDATA/edge1", data(6, [(None, 99, "Double", 1.0)]), 3000)
    assert reb == []  # throttled
    assert "unknown alias 99" in dead[0].reason
    _, _, _, reb = s.handle("spBv1.0/g1/NDATA/edge1", data(9, [(None, 1, "Double", 1.0)]), 20_000)
    assert reb == ["spBv1.0/g1/NCMD/edge1"]
    assert s.rebirths_requested == 2


def test_seq_wraps_at_256():
    s = SparkplugState(enterprise="acme", site="s1")
    s.handle("spBv1.0/g1/NBIRTH/edge1", birth(seq=0), 1000)
    for k in range(1, 300):
        _, _, _, reb = s.handle(
            "spBv1.0/g1/NDATA/edge1", data(k % 256, [(None, 1, "Double", 1.0)]), 1000 + k
        )
        assert reb == []


def test_malformed_sparkplug_is_a_dead_letter():
    s = SparkplugState(enterprise="acme", site="s1")
    _, dead, _, _ = s.handle("spBv1.0/g1/NDATA/edge1", b"\x0a\xff\xff", 1)
    assert "malformed" in dead[0].reason and dead[0].payload == b"\x0a\xff\xff"
