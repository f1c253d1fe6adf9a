"""Fault injection on real services: crashes, outages and hangs, with exact counts.

Each test runs flows as separate processes (``python -m bytewax.run``), injects a fault the
way it happens on a plant (``kill -9``, a service stopped or frozen with SIGSTOP, a signal)
and asserts exact outcomes: nothing lost, nothing duplicated, results identical to a run
without the fault. Waits are on what the flow or the services report, never fixed sleeps.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
import pytest
import yaml

from tests.conftest import require_port
from tests.faults import FlowProcess, wait_until

pytestmark = pytest.mark.integration


def _recovery(tmp_path: Path) -> Path:
    d = tmp_path / "recovery"
    d.mkdir()
    subprocess.run([sys.executable, "-m", "bytewax.recovery", str(d), "1"], check=True)
    return d


def _count(dsn: str, sql: str) -> int:
    try:
        with psycopg.connect(dsn, connect_timeout=2) as conn:
            row = conn.execute(sql).fetchone()
    except psycopg.errors.UndefinedTable:
        return 0
    return int(row[0]) if row else 0


def _write(tmp_path: Path, site: dict[str, Any]) -> Path:
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(site))
    return path


# -- MQTT QoS 1 across kill -9 ---------------------------------------------------------------


def test_mqtt_qos1_kill_9_with_recovery_loses_nothing(endpoints, tmp_path):
    """10,000 QoS 1 messages; the edge flow is killed mid-stream and resumed: all arrive."""
    require_port(endpoints.mqtt_host, endpoints.mqtt_port, "mosquitto")
    run = uuid.uuid4().hex[:8]
    schema = f"mqtt_k9_{run}"
    n, tags = 10_000, 20
    site = _write(
        tmp_path,
        {
            "name": "k9",
            "site": {"enterprise": "acme", "site": "s1"},
            "inputs": [
                {
                    "type": "mqtt",
                    "host": endpoints.mqtt_host,
                    "port": endpoints.mqtt_port,
                    "client_id": f"k9-{run}",
                    "topics": [{"template": f"k9{run}/{{area}}/{{line}}/{{machine}}/{{tag}}"}],
                }
            ],
            "sinks": [
                {
                    "type": "timescaledb",
                    "dsn": endpoints.pg_dsn,
                    "schema": schema,
                    "streams": ["raw"],
                    "close_timeout_s": 20,
                }
            ],
        },
    )
    recovery = _recovery(tmp_path)
    count_sql = f'select count(*) from "{schema}".points'
    flow = FlowProcess("flows.edge", site, cwd=tmp_path, recovery=recovery)
    flow.wait_for("mqtt: connected to")

    published = threading.Event()
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"k9-pub-{run}")
    pub.max_inflight_messages_set(100)
    pub.connect(endpoints.mqtt_host, endpoints.mqtt_port)
    pub.loop_start()
    base_ms = 1_780_000_000_000

    def publish() -> None:
        for i in range(n):
            topic = f"k9{run}/a/l/m/t{i % tags}"
            payload = f'{{"value": {i}, "ts_ms": {base_ms + (i // tags) * 1000}}}'
            info = pub.publish(topic, payload, qos=1)
            if i % 100 == 99 or i == n - 1:
                info.wait_for_publish(30)  # paced by the broker's acknowledgements
        published.set()

    publisher = threading.Thread(target=publish, daemon=True)
    try:
        publisher.start()
        wait_until(
            lambda: _count(endpoints.pg_dsn, count_sql) >= 1000,
            timeout_s=60,
            what="the first 1,000 points in the database",
        )
        flow.kill()  # mid-stream: messages are acknowledged, in the spool, in flight
        assert not published.is_set(), "the kill should land while messages still arrive"
        flow = FlowProcess("flows.edge", site, cwd=tmp_path, recovery=recovery)
        assert published.wait(120), "the publisher did not finish"
        wait_until(
            lambda: _count(endpoints.pg_dsn, count_sql) >= n,
            timeout_s=120,
            what=f"{n} points in the database",
        )
        flow.signal()
        assert flow.wait(30) == 0, flow.log[-3000:]
        with psycopg.connect(endpoints.pg_dsn) as conn:
            got = conn.execute(
                f'select count(*), count(distinct (path, ts)), sum(value) from "{schema}".points'
            ).fetchone()
        assert got is not None
        assert got[0] == got[1] == n
        assert got[2] == sum(range(n))
    finally:
        pub.loop_stop()
        if flow.running():
            flow.kill()
        with psycopg.connect(endpoints.pg_dsn, autocommit=True) as conn:
            conn.execute(f'drop schema if exists "{schema}" cascade')


# -- the Kafka uplink down at start and killed for 60 s --------------------------------------

START = "2026-06-01T10:00:00Z"


def _create_topics(bootstrap: str, *names: str) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    # Messages carry their event time (months ago here): only unlimited retention keeps them.
    futures = admin.create_topics(
        [
            NewTopic(n, num_partitions=3, replication_factor=1, config={"retention.ms": "-1"})
            for n in names
        ]
    )
    for f in futures.values():
        f.result(30)


def read_topic(bootstrap: str, topic: str) -> list[bytes]:
    """Every committed message value of ``topic`` (read_committed, from the beginning)."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"faults-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        out: list[bytes] = []
        pos = dict.fromkeys(parts, 0)
        # read_committed stops at the last stable offset: transaction markers are skipped.
        while any(pos[p] < ends[p] for p in parts):
            batch = c.consume(1000, timeout=5)
            if not batch:
                break
            for m in batch:
                if m.error() is None:
                    pos[m.partition()] = m.offset() + 1
                    out.append(m.value())
        return out
    finally:
        c.close()


def raw_points(values: list[bytes]) -> list[tuple[str, int, float]]:
    """Decode raw messages written with ``encoding: json`` (plain json, not our codec)."""
    import json

    out = []
    for v in values:
        doc = json.loads(v)
        for i, ts, value in zip(doc["tag_idx"], doc["ts_ms"], doc["value"], strict=True):
            out.append((doc["tags"][i][0], ts, value))
    return out


def _lines(path: Path) -> int:
    return path.read_text().count("\n") if path.exists() else 0


def test_kafka_down_at_start_and_killed_for_60_s_loses_and_duplicates_nothing(endpoints, tmp_path):
    from collections import Counter

    from tests.faults import service
    from tests.integration.test_edge_flow import demo_config, read_jsonl, simulated_points

    bootstrap = endpoints.kafka_bootstrap
    host, port = bootstrap.rsplit(":", 1)
    require_port(host, int(port), "Kafka")
    run = uuid.uuid4().hex[:8]
    raw_topic, events_topic = f"faults.{run}.raw", f"faults.{run}.events"
    _create_topics(bootstrap, raw_topic, events_topic)
    out = tmp_path / "out"
    # 1,200 s of the demo site at 10x: about two minutes, alarms and anomalies included.
    cfg = demo_config(out, speed=10, start=START, duration_s=1200, ticks_per_batch=1)
    cfg["sinks"].append(
        {
            "type": "kafka",
            "kafka": {"bootstrap_servers": bootstrap},
            "encoding": "json",
            "topics": {"raw": raw_topic, "events": events_topic},
            "delivery_timeout_s": 5,
        }
    )
    site = _write(tmp_path, cfg)
    raw_link = f"kafka://{bootstrap}/{raw_topic}"
    service("stop", "kafka")
    try:
        flow = FlowProcess("flows.edge", site, cwd=tmp_path)
        flow.wait_for(f"{raw_link} is down: ")  # a warning: the flow runs on, spooling
        assert flow.running()
        service("start", "kafka")
        flow.wait_for(f"{raw_link} is back after ")
        service("kill", "kafka")
        flow.wait_for(f"{raw_link} is down: ", count=2)
        raw_before, events_before = _lines(out / "raw.jsonl"), _lines(out / "events.jsonl")
        outage = threading.Event()
        outage.wait(60)  # the fault's length, not a synchronisation
        # Local sinks kept receiving points and events while the uplink was down.
        assert flow.running()
        assert _lines(out / "raw.jsonl") > raw_before + 29 * 10 * 50
        assert _lines(out / "events.jsonl") > events_before
    finally:
        service("start", "kafka")
    rc = flow.wait(240)
    assert rc == 0, flow.log[-3000:]
    # One line per state change of each producer, none per librdkafka retry: down and back
    # alternate, at most once per outage.
    for link in (raw_link, f"kafka://{bootstrap}/{events_topic}"):
        changes = [
            "down" if " is down: " in line else "back"
            for line in flow.log.splitlines()
            if f"{link} is down: " in line or f"{link} is back after " in line
        ]
        assert changes in (["down", "back"], ["down", "back"] * 2), (link, changes)
    first_down = next(line for line in flow.log.splitlines() if " is down: " in line)
    assert " WARNING " in first_down

    want = Counter((path, ts, value) for path, _unit, ts, value in simulated_points(cfg))
    got = Counter(raw_points(read_topic(bootstrap, raw_topic)))
    assert sum(want.values()) == 1200 * 29
    lost, duplicated = want - got, got - want
    assert (sum(lost.values()), sum(duplicated.values())) == (0, 0)

    import json

    data_events = [
        e for e in read_jsonl(out / "events.jsonl") if e["kind"] not in ("source", "spool")
    ]
    topic_events = [json.loads(v) for v in read_topic(bootstrap, events_topic)]
    topic_data = [e for e in topic_events if e["kind"] not in ("source", "spool")]
    key = lambda e: (e["kind"], e["rule"], e["path"], e["ts_ms"], e["state"])  # noqa: E731
    assert sorted(map(key, topic_data)) == sorted(map(key, data_events)) and data_events
