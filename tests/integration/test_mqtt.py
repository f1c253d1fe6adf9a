"""MQTT source through the real mosquitto broker: plain topics and Sparkplug B with rebirth."""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from bytewax.testing import run_main

from flows.build import build_flow
from flows.config import parse_site
from tests.conftest import require_port
from tests.faults import wait_until
from tests.integration.test_edge_flow import read_jsonl
from wire.sparkplug.codec import decode, encode

pytestmark = pytest.mark.integration


class EdgeNode:
    """A minimal Sparkplug B edge node that answers rebirth requests."""

    def __init__(self, host: str, port: int, group: str) -> None:
        self.group, self.rebirths = group, 0
        self.c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"edge-{uuid.uuid4().hex[:6]}"
        )
        self.c.on_message = self._on_cmd
        self.c.connect(host, port)
        self.c.subscribe(f"spBv1.0/{group}/NCMD/edge1", qos=1)
        self.c.loop_start()

    def _on_cmd(self, client, userdata, msg):
        (m,) = decode(msg.payload).metrics
        if m.name == "Node Control/Rebirth" and m.value is True:
            self.rebirths += 1
            self.birth()
            self.pub("NDATA", encode([(None, 1, "Double", 99.0)], seq=1, timestamp=3000))

    def pub(self, mtype: str, payload: bytes, topic: str | None = None) -> None:
        self.c.publish(
            topic or f"spBv1.0/{self.group}/{mtype}/edge1", payload, qos=1
        ).wait_for_publish(5)

    def birth(self) -> None:
        self.pub(
            "NBIRTH",
            encode(
                [("Inverter/ACPower", 1, "Double", 50.0), ("Inverter/Temp", 2, "Int8", -5)],
                seq=0,
                timestamp=1000,
            ),
        )


def test_plain_topics_and_sparkplug_rebirth(endpoints, tmp_path: Path):
    require_port(endpoints.mqtt_host, endpoints.mqtt_port, "mosquitto")
    run = uuid.uuid4().hex[:6]
    group = f"g{run}"
    cfg = {
        "name": "mqtt-test",
        "site": {"enterprise": "acme", "site": "s1"},
        "inputs": [
            {
                "type": "mqtt",
                "host": endpoints.mqtt_host,
                "port": endpoints.mqtt_port,
                "client_id": f"edgeflow-{run}",
                "topics": [
                    {"template": f"plant{run}/{{area}}/{{line}}/{{machine}}/{{tag}}", "unit": "kW"}
                ],
                "sparkplug_groups": [group],
                "max_messages": 15,
            }
        ],
        "sinks": [
            {"type": "file", "dir": str(tmp_path), "streams": ["raw", "dead_letters", "events"]}
        ],
    }
    flow_thread = threading.Thread(target=run_main, args=(build_flow(parse_site(cfg)),))
    flow_thread.start()
    wait_until(  # subscribed: from here on the broker keeps every message for the flow
        lambda: "source_up" in _text(tmp_path / "events.jsonl"),
        timeout_s=30,
        what="the MQTT input's source_up event",
    )
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"pub-{run}")
    pub.connect(endpoints.mqtt_host, endpoints.mqtt_port)
    pub.loop_start()
    for i in range(5):
        pub.publish(
            f"plant{run}/pv/a1/inv-01/ac_power", f'{{"value": {i}, "ts_ms": {1000 + i}}}', qos=1
        ).wait_for_publish(5)
    pub.publish(f"plant{run}/pv/a1/inv-02/ac_power", "7.5", qos=1).wait_for_publish(5)
    pub.publish(f"plant{run}/pv/a1/inv-02/ac_power", "8", qos=1).wait_for_publish(5)
    pub.publish(f"plant{run}/pv/a1/inv-02/ac_power", "{broken", qos=1).wait_for_publish(5)
    edge = EdgeNode(endpoints.mqtt_host, endpoints.mqtt_port, group)
    edge.birth()
    edge.pub("NDATA", encode([(None, 1, "Double", 51.0)], seq=1, timestamp=2000))
    edge.pub("NDATA", encode([(None, 1, "Double", 52.0)], seq=5, timestamp=2500))  # gap
    edge.pub("X", b"junk", topic=f"spBv1.0/{group}/NDATA/edge1/dev/extra")
    flow_thread.join(30)
    assert not flow_thread.is_alive(), "the flow should end after max_messages"
    assert edge.rebirths == 1

    raw = read_jsonl(tmp_path / "raw.jsonl")
    plain = sorted(
        (r["machine"], r["value"]) for r in raw if r["site"] == "s1" and r["area"] == "pv"
    )
    assert plain == [("inv-01", float(i)) for i in range(5)] + [("inv-02", 7.5), ("inv-02", 8.0)]
    sp = [(r["tag"], r["value"]) for r in raw if r["area"] == group]
    assert ("Inverter.Temp", -5.0) in sp  # negative Int8 from the birth
    assert [v for t, v in sp if t == "Inverter.ACPower"] == [50.0, 51.0, 52.0, 50.0, 99.0]
    dead = read_jsonl(tmp_path / "dead_letters.jsonl")
    reasons = sorted(d["reason"].split(":")[0] for d in dead)
    assert any("not a Sparkplug B topic" in d["reason"] for d in dead)
    assert any(d["reason"].startswith(f"plant{run}/pv/a1/inv-02/ac_power") for d in dead), reasons
    pub.loop_stop()
    edge.c.loop_stop()


def test_tls_with_username_and_password(endpoints):
    import ssl

    from connectors.mqtt.config import MqttInput
    from connectors.mqtt.source import MqttSource
    from wire.records import Event, PointBatch

    require_port(endpoints.mqtt_host, endpoints.mqtt_tls_port, "mosquitto (TLS)")
    run = uuid.uuid4().hex[:6]
    src = MqttSource(
        MqttInput(
            type="mqtt",
            host=endpoints.mqtt_host,
            port=endpoints.mqtt_tls_port,
            topics=[{"template": f"tls{run}/{{area}}/{{line}}/{{machine}}/{{tag}}"}],
            client_id=f"tls-{run}",
            username="edgeflow",
            password="edgeflow",
            tls_ca=endpoints.mqtt_ca,
            connect_timeout_s=5,
        ),
        "acme",
        "s1",
    )
    part = src.build_part("s", src.list_parts()[0], None)
    up: list = []
    deadline = time.monotonic() + 10
    while not up and time.monotonic() < deadline:  # subscribed once the source is up
        up = [e for e in part.next_batch() if isinstance(e, Event) and e.state == "source_up"]
        time.sleep(0.05)
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"tls-pub-{run}")
    pub.username_pw_set("edgeflow", "edgeflow")
    pub.tls_set(ca_certs=endpoints.mqtt_ca, cert_reqs=ssl.CERT_REQUIRED)
    pub.connect(endpoints.mqtt_host, endpoints.mqtt_tls_port)
    pub.loop_start()
    pub.publish(f"tls{run}/pv/a1/inv-01/ac_power", "42", qos=1).wait_for_publish(5)
    got = []
    deadline = time.monotonic() + 10
    while not got and time.monotonic() < deadline:
        got = [b for b in part.next_batch() if isinstance(b, PointBatch)]
        time.sleep(0.05)
    pub.loop_stop()
    part.close()
    assert got and got[0].value.tolist() == [42.0]

    wrong = MqttSource(
        MqttInput(
            type="mqtt",
            host=endpoints.mqtt_host,
            port=endpoints.mqtt_tls_port,
            client_id=f"bad-{run}",
            topics=[{"template": "x/{tag}"}],
            username="edgeflow",
            password="nope",
            tls_ca=endpoints.mqtt_ca,
            connect_timeout_s=3,
        ),
        "enterprise",
        "site",
    )
    # A refused login is a source_down event with the broker's reason, not a crash; paho
    # keeps retrying (the password may be fixed on the broker side).
    bad = wrong.build_part("s", wrong.list_parts()[0], None)
    events: list = []
    deadline = time.monotonic() + 10
    while not events and time.monotonic() < deadline:
        events = [e for e in bad.next_batch() if isinstance(e, Event)]
        time.sleep(0.05)
    bad.close()
    assert [e.state for e in events] == ["source_down"]
    assert "Not authorized" in events[0].message


def test_poison_messages_through_a_real_broker_are_dead_letters_and_good_ones_arrive(endpoints):
    """Thousands of malformed payloads interleaved with good ones: no crash, each bad message
    one dead letter, every good message delivered (in a single flow run, QoS 1)."""
    import random

    from connectors.mqtt.config import MqttInput
    from connectors.mqtt.source import MqttSource
    from tests.unit.test_poison_payloads import FIELD_CRASHES
    from wire.records import DeadLetter, Event, PointBatch
    from wire.sparkplug.codec import encode

    require_port(endpoints.mqtt_host, endpoints.mqtt_port, "mosquitto")
    run = uuid.uuid4().hex[:6]
    rng = random.Random(7)
    bad = [p for p in FIELD_CRASHES if len(p) < 100_000] + [
        bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 60))) for _ in range(1500)
    ]
    sparkplug_bad = [b"\x0a\xff\xff", b"\x08" + b"\xff" * 9 + b"\x01", b"\x12\x03\x0a\x01\xff"]
    src = MqttSource(
        MqttInput(
            type="mqtt",
            host=endpoints.mqtt_host,
            port=endpoints.mqtt_port,
            client_id=f"poison-{run}",
            topics=[{"template": f"poison{run}/{{area}}/{{line}}/{{machine}}/{{tag}}"}],
            sparkplug_groups=[f"g{run}"],
        ),
        "acme",
        "s1",
    )
    part = src.build_part("s", src.list_parts()[0], None)
    got: list = []
    deadline = time.monotonic() + 10
    while not any(isinstance(i, Event) for i in got) and time.monotonic() < deadline:
        got += part.next_batch()
        time.sleep(0.05)
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"poison-pub-{run}")
    pub.connect(endpoints.mqtt_host, endpoints.mqtt_port)
    pub.loop_start()
    good = 0
    expected_bad = 0
    topic = f"poison{run}/a/l/m"
    sent = 0
    for i, payload in enumerate(bad):
        if i % 200 == 0:  # keep within the broker's per-client queue (max_queued_messages)
            wait = time.monotonic() + 30
            while part.taken < sent and time.monotonic() < wait:
                got += part.next_batch()
                time.sleep(0.01)
        pub.publish(f"{topic}/t{i % 7}", payload, qos=1)
        sent += 2
        ok = False
        try:
            from connectors.mqtt.payloads import PayloadError, parse_plain

            parse_plain(payload, "json", 0)
            ok = True
        except PayloadError:
            pass
        good += ok
        expected_bad += not ok
        pub.publish(f"{topic}/good", json.dumps({"value": i, "ts_ms": 1_000_000 + i}), qos=1)
        good += 1
    birth = encode([("x", 1, "Double", 1.0)], seq=0, timestamp=1000)
    pub.publish(f"spBv1.0/g{run}/NBIRTH/n1", birth, qos=1)
    for p in sparkplug_bad:
        pub.publish(f"spBv1.0/g{run}/NDATA/n1", p, qos=1).wait_for_publish(5)
    total = len(bad) * 2 + 1 + len(sparkplug_bad)
    deadline = time.monotonic() + 60
    while part.taken < total and time.monotonic() < deadline:
        got += part.next_batch()
        time.sleep(0.02)
    got += part.next_batch()
    pub.loop_stop()
    part.close()
    values = [v for b in got if isinstance(b, PointBatch) for v in b.value.tolist()]
    good_values = sorted(
        v
        for b in got
        if isinstance(b, PointBatch)
        for i, v in zip(b.tag_idx.tolist(), b.value.tolist(), strict=True)
        if b.tags[i].tag == "good"
    )
    assert good_values == [float(i) for i in range(len(bad))]  # every good message, once
    dead = [d for d in got if isinstance(d, DeadLetter)]
    sparkplug_dead = [d for d in dead if d.reason.startswith("spBv1.0/")]
    assert len(dead) - len(sparkplug_dead) == expected_bad  # each bad message one dead letter
    assert len(sparkplug_dead) >= len(sparkplug_bad)
    assert len(values) == good + 1  # plus the birth's metric


def _text(path: Path) -> str:
    return path.read_text() if path.exists() else ""
