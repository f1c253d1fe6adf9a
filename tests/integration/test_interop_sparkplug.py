"""Sparkplug B host behaviour on messages encoded by Eclipse Tahu JS (sparkplug-payload, npm).

The messages are produced by tests/interop/sparkplug_vectors.js at test time, so the decoder
meets an encoder that is not its own; the expectations are the specification's.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from connectors.mqtt.sparkplug import SparkplugState
from tests.interop.servers import HERE

pytestmark = pytest.mark.integration
T0 = 1767225600000
NODE = "acme/s1/plant/edge1/node"


@pytest.fixture(scope="module")
def messages() -> dict[str, tuple[str, bytes]]:
    out = subprocess.run(
        ["node", str(HERE / "sparkplug_vectors.js")], capture_output=True, text=True, check=True
    ).stdout
    return {m["step"]: (m["topic"], bytes.fromhex(m["hex"])) for m in json.loads(out)}


def test_tahu_messages_become_points_text_and_dead_letters_never_nothing(messages):
    s = SparkplugState(enterprise="acme", site="s1")
    samples, dead, events, rebirth = s.handle(*messages["birth"], now=T0 + 10)
    by_path = {p[0]: p for p in samples}
    # Units from the birth's engUnit property; Boolean as 0/1; String as text.
    assert by_path[f"{NODE}/Inverter.ACPower"][1:4] == ("kW", T0, 50.5)
    assert by_path[f"{NODE}/Running"][3] == 1.0
    assert by_path[f"{NODE}/Mode"][3] == "AUTO"
    # 2**53 - 1 is exact as a float; 2**60 is not: a dead letter, never a rounded number.
    assert by_path[f"{NODE}/Counter"][3] == 9007199254740991.0
    assert f"{NODE}/Energy" not in by_path
    reasons = sorted(d.reason for d in dead)
    assert any("Energy: UInt64 value 1152921504606846976 is beyond 2**53" in r for r in reasons)
    assert any("Table: dataset values (DataSet) are not supported" in r for r in reasons)
    assert any("Blob: Bytes values are not supported" in r for r in reasons)
    assert len(dead) == 3 and events == [] and rebirth == []
    assert f"{NODE}/bdSeq" not in by_path  # the session counter is not plant data

    samples, dead, _, rebirth = s.handle(*messages["data"], now=T0 + 2010)
    got = [(p[0].rsplit("/", 1)[1], p[1], p[2], p[3], p[5], p[6]) for p in samples]
    assert got == [
        ("Inverter.ACPower", "kW", T0 + 1000, 51.0, True, False),  # historical
        ("Inverter.ACPower", "kW", T0 + 2000, 52.0, False, True),  # transient
        ("Mode", "", T0 + 2000, "MANUAL", False, False),
    ]
    assert sorted(d.reason.split(": ", 1)[1] for d in dead) == [
        "metric Energy: UInt64 value 1152921504606846977 is beyond 2**53 and cannot be kept "
        "exactly as a number",
        "metric UDT: template values (Template) are not supported",
    ]
    assert rebirth == []


def test_a_late_death_of_an_earlier_session_is_ignored_the_real_one_marks_stale(messages):
    s = SparkplugState(enterprise="acme", site="s1")
    s.handle(*messages["birth"], now=T0)
    _, dead, events, _ = s.handle(*messages["old-death"], now=T0 + 5000)
    assert events == [] and dead == []  # bdSeq 2 is not the current session's 3
    _, dead, events, _ = s.handle(*messages["death"], now=T0 + 6000)
    assert dead == []
    stale = sorted(e.path.rsplit("/", 1)[1] for e in events)
    assert stale == ["Blob", "Counter", "Energy", "Inverter.ACPower", "Mode", "Running", "Table"]
    assert all(e.kind == "stale" and e.rule == "sparkplug.ndeath" for e in events)


def test_a_timestamp_of_2_64_minus_1_is_a_dead_letter_not_a_crash(messages):
    s = SparkplugState(enterprise="acme", site="s1")
    s.handle(*messages["birth"], now=T0)
    samples, dead, _, _ = s.handle(*messages["bad-time"], now=T0 + 3000)
    assert samples == []
    assert len(dead) == 1 and "18446744073709551615 ms is outside 1970..2248" in dead[0].reason
