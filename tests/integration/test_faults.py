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


def _messages(bootstrap: str, topic: str) -> list[tuple[int, bytes]]:
    """``(timestamp ms, value)`` of every committed message of ``topic``, from the start."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"faults-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            # Transaction markers have offsets but are never read: stop at each partition's end.
            "enable.partition.eof": True,
        }
    )
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        out: list[tuple[int, bytes]] = []
        ended: set[int] = set()
        while len(ended) < len(parts):
            batch = c.consume(1000, timeout=10)
            assert batch, f"{topic}: no end reached"
            for m in batch:
                err = m.error()
                if err is None:
                    out.append((m.timestamp()[1], m.value()))
                elif err.code() == KafkaError._PARTITION_EOF:
                    ended.add(m.partition())
        return out
    finally:
        c.close()


def read_topic(bootstrap: str, topic: str) -> list[bytes]:
    """Every committed message value of ``topic``."""
    return [v for _, v in _messages(bootstrap, topic)]


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


# -- a hung database -------------------------------------------------------------------------


def test_a_hung_database_changes_neither_latency_nor_results(endpoints, tmp_path):
    """PostgreSQL frozen (SIGSTOP, with its backends) for 15 s of a live run: the stall is
    reported, points and alarms reach Kafka within 1 s throughout, the database gets every
    row afterwards and the results equal a replay of the same points without the fault."""
    import json
    import time

    from bytewax.testing import run_main

    from flows.backtest import final_rows
    from flows.build import build_flow
    from flows.config import DEMO_SITE, parse_site
    from tests.faults import service
    from tests.integration.test_edge_flow import demo_config, read_jsonl

    bootstrap = endpoints.kafka_bootstrap
    run = uuid.uuid4().hex[:8]
    schema = f"hang_{run}"
    raw_topic, events_topic = f"faults.{run}.raw", f"faults.{run}.events"
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    for f in admin.create_topics(
        [
            NewTopic(
                t,
                num_partitions=1,
                replication_factor=1,
                config={"retention.ms": "-1", "message.timestamp.type": "LogAppendTime"},
            )
            for t in (raw_topic, events_topic)
        ]
    ).values():
        f.result(30)
    out = tmp_path / "out"
    # Live: real time from now, so a point's time is when it was made.
    cfg = demo_config(out, speed=1, duration_s=45, ticks_per_batch=1)
    # An alarm that toggles every few seconds (grid frequency around 50 Hz): events throughout.
    for step in cfg["operators"]:
        if step["type"] == "alarm":
            step["rules"].append(
                {"id": "f-over-50", "tags": "frequency", "limit": 50.0, "deadband": 0.0}
            )
    cfg["sinks"] += [
        {
            "type": "kafka",
            "kafka": {"bootstrap_servers": bootstrap},
            "encoding": "json",
            "topics": {"raw": raw_topic, "events": events_topic},
        },
        {
            "type": "timescaledb",
            "dsn": endpoints.pg_dsn,
            "schema": schema,
            "streams": ["aggregates", "events"],
            "stall_after_s": 3,
        },
    ]
    site = _write(tmp_path, cfg)
    flow = FlowProcess("flows.edge", site, cwd=tmp_path)
    try:
        flow.wait_for("timescaledb: connected to")
        # Alarms toggle every few seconds: the database is being written to. (Not the first
        # aggregates: with a run this short they may only come at its end, by wall clock.)
        wait_until(
            lambda: _count(endpoints.pg_dsn, f'select count(*) from "{schema}".events'),
            timeout_s=60,
            what="the first events in the database",
        )
        service("freeze", "postgres")
        frozen_ms = int(time.time() * 1000)
        try:
            flow.wait_for("a write has had no answer")  # the stall is reported
            threading.Event().wait(15)  # the fault's length, not a synchronisation
        finally:
            thawed_ms = int(time.time() * 1000)
            service("thaw", "postgres")
        assert flow.wait(120) == 0, flow.log[-3000:]
    finally:
        if flow.running():
            flow.kill()
    # Throughout the hang, Kafka got points and alarms within seconds of their time. A pipeline
    # blocked by the database would show the fault's 15 s; the bound leaves room for a loaded
    # CI machine (1041 ms was seen there with nothing blocked).
    raw = [
        (t, max(json.loads(v)["ts_ms"]))
        for t, v in _messages(bootstrap, raw_topic)
        if frozen_ms <= t <= thawed_ms
    ]
    alarms = [
        (t, e["ts_ms"])
        for t, e in ((t, json.loads(v)) for t, v in _messages(bootstrap, events_topic))
        if frozen_ms <= t <= thawed_ms and e["kind"] == "alarm"
    ]
    assert len(raw) >= 15 and len(alarms) >= 3, (len(raw), len(alarms))
    assert max(t - ts for t, ts in raw) <= 3000
    assert max(t - ts for t, ts in alarms) <= 3000

    # Results: no point was late, and a replay of the same points gives the same aggregates.
    assert read_jsonl(out / "late.jsonl") == []
    live_aggs = final_rows(read_jsonl(out / "aggregates.jsonl"))
    replay = json.loads(json.dumps(cfg))
    replay["inputs"] = [
        {
            "type": "kafka",
            "kafka": {"bootstrap_servers": bootstrap},
            "topic": raw_topic,
            "bounded": True,
        }
    ]
    replay["sinks"] = [{"type": "file", "dir": str(tmp_path / "replay"), "streams": ["aggregates"]}]
    run_main(build_flow(parse_site(replay, base_dir=DEMO_SITE.parent), name="process"))
    replay_aggs = final_rows(read_jsonl(tmp_path / "replay" / "aggregates.jsonl"))
    strip = lambda r: {k: v for k, v in r.items() if k not in ("revision", "closed_by")}  # noqa: E731
    assert {k: strip(v) for k, v in live_aggs.items()} == {
        k: strip(v) for k, v in replay_aggs.items()
    }
    # And the database, once back, holds every aggregate the flow made.
    try:
        with psycopg.connect(endpoints.pg_dsn) as conn:
            rows = conn.execute(
                "select path, window_ms, (extract(epoch from start_ts) * 1000)::bigint, count, sum"
                f' from "{schema}".aggregates'
            ).fetchall()
        assert {(p, w, s): (c, t) for p, w, s, c, t in rows} == {
            k: (v["count"], v["sum"]) for k, v in live_aggs.items()
        }
    finally:
        with psycopg.connect(endpoints.pg_dsn, autocommit=True) as conn:
            conn.execute(f'drop schema if exists "{schema}" cascade')


# -- kill -9 of the edge flow and of the processor, with recovery -----------------------------


def test_kill_9_of_edge_and_processor_with_recovery_loses_and_duplicates_nothing(
    endpoints, tmp_path
):
    """Both flows killed mid-stream and resumed from their recovery stores: the raw topic
    holds every point exactly once, the processor's topic every aggregate exactly once, and
    its database tables equal an uninterrupted run's."""
    import json
    from collections import Counter

    from bytewax.testing import run_main

    from flows.build import build_flow
    from flows.config import DEMO_SITE, parse_site
    from tests.integration.test_edge_flow import demo_config, simulated_points
    from tests.integration.test_recovery_and_outage import drop, snapshot_tables

    bootstrap = endpoints.kafka_bootstrap
    run = uuid.uuid4().hex[:8]
    raw_topic, aggs_topic = f"faults.{run}.raw", f"faults.{run}.aggregates"
    _create_topics(bootstrap, raw_topic, aggs_topic)
    killed, reference = f"k9p_{run}", f"k9ref_{run}"

    edge_out = tmp_path / "edge"
    edge_cfg = demo_config(edge_out, speed=100, start=START, duration_s=1800, ticks_per_batch=5)
    edge_cfg["sinks"] = [
        {"type": "file", "dir": str(edge_out), "streams": ["raw"]},
        {
            "type": "kafka",
            "kafka": {"bootstrap_servers": bootstrap},
            "encoding": "json",
            "topics": {"raw": raw_topic},
        },
    ]
    edge_dir = tmp_path / "edge-run"
    edge_dir.mkdir()
    edge_site = _write(edge_dir, edge_cfg)

    def processor(schema: str, out: Path, **kafka_input: Any) -> dict[str, Any]:
        cfg = json.loads(json.dumps(edge_cfg))
        cfg["inputs"] = [
            {
                "type": "kafka",
                "kafka": {"bootstrap_servers": bootstrap},
                "topic": raw_topic,
                **kafka_input,
            }
        ]
        for step in cfg["operators"]:
            if step["type"] == "aggregate":
                # Windows close on event time only: a restart's pause must not close them.
                step["idle_close"] = False
        cfg["sinks"] = [
            {"type": "file", "dir": str(out), "streams": ["raw"]},
            {
                "type": "kafka",
                "kafka": {"bootstrap_servers": bootstrap},
                "topics": {"aggregates": aggs_topic},
            },
            {
                "type": "timescaledb",
                "dsn": endpoints.pg_dsn,
                "schema": schema,
                "streams": ["aggregates", "events", "kpis"],
            },
        ]
        return cfg

    proc_dir = tmp_path / "proc-run"
    proc_dir.mkdir()
    proc_out = tmp_path / "proc"
    proc_site = _write(proc_dir, processor(killed, proc_out))
    edge_rec, proc_rec = _recovery(edge_dir), _recovery(proc_dir)
    total = 1800 * 29
    edge = FlowProcess("flows.edge", edge_site, cwd=edge_dir, recovery=edge_rec)
    proc = FlowProcess("flows.process", proc_site, cwd=proc_dir, recovery=proc_rec)
    try:
        wait_until(
            lambda: _lines(edge_out / "raw.jsonl") >= total // 4,
            timeout_s=60,
            what="a quarter of the points through the edge flow",
        )
        edge.kill()
        assert _lines(edge_out / "raw.jsonl") < total, "the edge kill should land mid-stream"
        edge = FlowProcess("flows.edge", edge_site, cwd=edge_dir, recovery=edge_rec)
        wait_until(
            lambda: _count(endpoints.pg_dsn, f'select count(*) from "{killed}".aggregates') >= 200,
            timeout_s=60,
            what="the processor's first aggregates",
        )
        proc.kill()
        proc = FlowProcess("flows.process", proc_site, cwd=proc_dir, recovery=proc_rec)
        assert edge.wait(120) == 0, edge.log[-3000:]
        wait_until(
            lambda: _lines(proc_out / "raw.jsonl") >= total,
            timeout_s=120,
            what="the processor to take every point",
        )
        proc.signal()  # a clean stop: inputs end, windows flush, sinks deliver
        assert proc.wait(60) == 0, proc.log[-3000:]
    finally:
        for f in (edge, proc):
            if f.running():
                f.kill()
    try:
        # The raw topic: every point exactly once.
        want = Counter((p, ts, v) for p, _u, ts, v in simulated_points(edge_cfg))
        got = Counter(raw_points(read_topic(bootstrap, raw_topic)))
        assert sum(want.values()) == total
        assert (sum((want - got).values()), sum((got - want).values())) == (0, 0)
        # The processor: the same tables as an uninterrupted run over the same topic.
        ref_cfg = processor(reference, tmp_path / "ref", bounded=True)
        ref_cfg["sinks"] = [s for s in ref_cfg["sinks"] if s["type"] != "kafka"]
        run_main(
            build_flow(
                parse_site(ref_cfg, base_dir=DEMO_SITE.parent),
                name="process",
            )
        )
        got_tables = snapshot_tables(endpoints.pg_dsn, killed)
        want_tables = snapshot_tables(endpoints.pg_dsn, reference)
        assert len(want_tables["aggregates"]) == (30 + 2) * 29
        for table in want_tables:
            assert got_tables[table] == want_tables[table], table
        # And its aggregates topic: every window exactly once (transactions per epoch).
        rows = [json.loads(v) for v in read_topic(bootstrap, aggs_topic)]
        keys = Counter((r["path"], r["window_ms"], r["start_ms"], r["revision"]) for r in rows)
        assert len(keys) == len(want_tables["aggregates"])
        assert max(keys.values()) == 1
    finally:
        drop(endpoints.pg_dsn, killed, reference)


# -- signals and bounded runs that cannot deliver ----------------------------------------------


def _edge_live(out: Path) -> dict[str, Any]:
    from tests.integration.test_edge_flow import demo_config

    cfg = demo_config(out, speed=1)  # live, real time, no end
    return cfg


def _stops_flushing(flow: FlowProcess, sig_name: str, out: Path) -> None:
    """Signal ``flow``: it exits 0 within 10 s, having flushed the windows still open."""
    import signal
    import time

    from tests.integration.test_edge_flow import read_jsonl

    t0 = time.monotonic()
    flow.signal(getattr(signal, sig_name))
    rc = flow.wait(30)
    took = time.monotonic() - t0
    assert rc == 0, flow.log[-3000:]
    assert took <= 10, took
    assert any(r["closed_by"] == "eof" for r in read_jsonl(out / "aggregates.jsonl"))


@pytest.mark.parametrize("sig_name", ["SIGINT", "SIGTERM"])
def test_a_signal_stops_the_edge_flow_flushing_within_10_s(tmp_path, sig_name):

    out = tmp_path / "out"
    flow = FlowProcess("flows.edge", _write(tmp_path, _edge_live(out)), cwd=tmp_path)
    try:
        flow.wait_for("sim: simulating")
        wait_until(lambda: _lines(out / "raw.jsonl") >= 29, timeout_s=30, what="the first points")
        _stops_flushing(flow, sig_name, out)
    finally:
        flow.kill()


@pytest.mark.parametrize("sig_name", ["SIGINT", "SIGTERM"])
def test_a_signal_stops_the_processor_flushing_within_10_s(endpoints, tmp_path, sig_name):
    import json

    from bytewax.testing import run_main

    from flows.build import build_flow
    from flows.config import DEMO_SITE, parse_site
    from tests.integration.test_edge_flow import demo_config

    bootstrap = endpoints.kafka_bootstrap
    topic = f"faults.{uuid.uuid4().hex[:8]}.raw"
    _create_topics(bootstrap, topic)
    edge = demo_config(tmp_path / "edge", speed=0, start=START, duration_s=300, ticks_per_batch=60)
    edge["sinks"] = [
        {"type": "kafka", "kafka": {"bootstrap_servers": bootstrap}, "topics": {"raw": topic}}
    ]
    run_main(build_flow(parse_site(edge, base_dir=DEMO_SITE.parent)))
    out = tmp_path / "out"
    cfg = json.loads(json.dumps(edge))
    cfg["inputs"] = [
        {"type": "kafka", "kafka": {"bootstrap_servers": bootstrap}, "topic": topic}
    ]  # live: it never ends by itself
    for step in cfg["operators"]:
        if step["type"] == "aggregate":
            step["idle_close"] = False
    cfg["sinks"] = [{"type": "file", "dir": str(out), "streams": ["raw", "aggregates"]}]
    flow = FlowProcess("flows.process", _write(tmp_path, cfg), cwd=tmp_path)
    try:
        wait_until(
            lambda: _lines(out / "raw.jsonl") >= 300 * 29, timeout_s=60, what="every point read"
        )
        _stops_flushing(flow, sig_name, out)
    finally:
        flow.kill()


def test_a_second_signal_aborts_at_once(tmp_path):
    import signal
    import socket
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    cfg = _edge_live(tmp_path / "out")
    cfg["sinks"].append(
        {
            "type": "kafka",
            "kafka": {"bootstrap_servers": f"127.0.0.1:{closed_port}"},
            "topics": {"raw": "nowhere"},
            "close_timeout_s": 120,
        }
    )
    flow = FlowProcess("flows.edge", _write(tmp_path, cfg), cwd=tmp_path)
    try:
        flow.wait_for(" is down: ")
        flow.signal(signal.SIGINT)
        flow.wait_for("stop requested (SIGINT)")
        assert flow.running()  # waiting up to close_timeout_s for the broker
        t0 = time.monotonic()
        flow.signal(signal.SIGINT)
        rc = flow.wait(30)
        took = time.monotonic() - t0
    finally:
        flow.kill()
    assert rc == 130 and took <= 5, (rc, took)
    assert "second SIGINT: aborting without flushing" in flow.log


def test_a_bounded_run_with_the_database_down_fails_and_the_next_run_writes_its_rows(
    endpoints, tmp_path
):
    from tests.faults import service
    from tests.integration.test_edge_flow import demo_config

    schema = f"down_{uuid.uuid4().hex[:8]}"

    def site(start: str) -> Path:
        cfg = demo_config(tmp_path / "out", speed=0, start=start, duration_s=600)
        cfg["sinks"] = [
            {
                "type": "timescaledb",
                "dsn": endpoints.pg_dsn,
                "schema": schema,
                "streams": ["raw"],
                "close_timeout_s": 3,
            }
        ]
        return _write(tmp_path, cfg)

    service("stop", "postgres")
    try:
        first = FlowProcess("flows.edge", site("2026-06-01T10:00:00Z"), cwd=tmp_path)
        rc = first.wait(120)
    finally:
        service("start", "postgres")
    assert rc != 0
    assert f"{600 * 29} rows for timescaledb were not written within 3 s" in first.log
    assert "written by the next run" in first.log
    # The next run (another ten minutes) writes its own rows and the ones kept from before.
    second = FlowProcess("flows.edge", site("2026-06-01T10:10:00Z"), cwd=tmp_path)
    assert second.wait(120) == 0, second.log[-3000:]
    try:
        assert _count(endpoints.pg_dsn, f'select count(*) from "{schema}".points') == 2 * 600 * 29
    finally:
        with psycopg.connect(endpoints.pg_dsn, autocommit=True) as conn:
            conn.execute(f'drop schema if exists "{schema}" cascade')
