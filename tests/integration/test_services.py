"""The services started by infra/local answer their real clients on loopback."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

import paho.mqtt.client as mqtt
import psycopg
import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from tests.conftest import require_port

pytestmark = pytest.mark.integration


def _hostport(bootstrap: str) -> tuple[str, int]:
    host, port = bootstrap.rsplit(":", 1)
    return host, int(port)


def test_kafka_accepts_produce_and_consume(endpoints):
    require_port(*_hostport(endpoints.kafka_bootstrap), "Kafka")
    topic = f"edgeflow-smoke-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": endpoints.kafka_bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])[topic].result(30)

    producer = Producer(
        {"bootstrap.servers": endpoints.kafka_bootstrap, "enable.idempotence": True, "acks": "all"}
    )
    delivered: list = []
    errors: list = []

    def on_delivery(err, msg):
        (errors if err else delivered).append(err or msg)

    for i in range(100):
        producer.produce(
            topic, key=f"tag-{i % 7}", value=json.dumps({"i": i}), on_delivery=on_delivery
        )
    assert producer.flush(30) == 0
    assert errors == [] and len(delivered) == 100
    # One key stays in one partition.
    parts: dict[bytes, set[int]] = {}
    for m in delivered:
        parts.setdefault(m.key(), set()).add(m.partition())
    assert all(len(p) == 1 for p in parts.values())

    consumer = Consumer(
        {
            "bootstrap.servers": endpoints.kafka_bootstrap,
            "group.id": f"smoke-{uuid.uuid4().hex[:6]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    seen: set[int] = set()
    deadline = time.monotonic() + 60
    while len(seen) < 100 and time.monotonic() < deadline:
        msg = consumer.poll(1.0)
        if msg is None:
            continue
        assert msg.error() is None, msg.error()
        seen.add(json.loads(msg.value())["i"])
    consumer.close()
    assert seen == set(range(100))
    admin.delete_topics([topic])


def test_postgres_accepts_queries(endpoints):
    info = psycopg.conninfo.conninfo_to_dict(endpoints.pg_dsn)
    require_port(info.get("host", "127.0.0.1"), int(info.get("port", 5432)), "PostgreSQL")
    with psycopg.connect(endpoints.pg_dsn, connect_timeout=10) as conn:
        conn.execute("create temporary table t (ts timestamptz primary key, v double precision)")
        conn.execute("insert into t values (now(), 1.5)")
        assert conn.execute("select sum(v) from t").fetchone() == (1.5,)
        version = conn.execute("show server_version_num").fetchone()[0]
        assert int(version) >= 130000


def test_mosquitto_delivers_qos1(endpoints):
    require_port(endpoints.mqtt_host, endpoints.mqtt_port, "mosquitto")
    topic = f"edgeflow/smoke/{uuid.uuid4().hex[:8]}"
    got = threading.Event()
    payloads: list[bytes] = []

    def on_message(client, userdata, msg):
        payloads.append(msg.payload)
        got.set()

    subscribed = threading.Event()
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"sub-{uuid.uuid4().hex[:6]}")
    sub.on_message = on_message
    sub.on_subscribe = lambda *a: subscribed.set()
    sub.connect(endpoints.mqtt_host, endpoints.mqtt_port)
    sub.loop_start()
    sub.subscribe(topic, qos=1)
    assert subscribed.wait(10)
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:6]}")
    pub.connect(endpoints.mqtt_host, endpoints.mqtt_port)
    pub.loop_start()
    pub.publish(topic, b'{"value": 1.5}', qos=1).wait_for_publish(10)
    assert got.wait(10)
    assert payloads == [b'{"value": 1.5}']
    for c in (pub, sub):
        c.loop_stop()
        c.disconnect()


def test_influxdb_v1_write_and_query(endpoints):
    u = urllib.parse.urlparse(endpoints.influx_url)
    require_port(u.hostname or "127.0.0.1", u.port or 8086, "InfluxDB")
    db = f"smoke_{uuid.uuid4().hex[:8]}"

    # Authentication is on: anonymous requests are refused, the admin creates the database.
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(
            urllib.request.Request(
                f"{endpoints.influx_url}/query?" + urllib.parse.urlencode({"q": "SHOW DATABASES"})
            ),
            timeout=10,
        )
    assert refused.value.code == 401
    endpoints.influx("/query", q=f'CREATE DATABASE "{db}"')
    endpoints.influx("/write", db=db, data=b"power,site=s1 value=1.5 1767225600000000000")
    body = endpoints.influx("/query", db=db, q="SELECT value FROM power")
    assert body["results"][0]["series"][0]["values"] == [["2026-01-01T00:00:00Z", 1.5]]
    endpoints.influx("/query", q=f'DROP DATABASE "{db}"')
