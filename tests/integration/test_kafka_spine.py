"""Edge -> Kafka raw topic -> processor / backtest, against the real broker and PostgreSQL."""

from __future__ import annotations

import json
import socket
import time
import uuid
from pathlib import Path

import psycopg
import pytest
from bytewax.testing import run_main
from confluent_kafka.admin import AdminClient, NewTopic

from connectors.errors import SourceError
from connectors.kafka.config import KafkaConnection, KafkaInput
from connectors.kafka.sink import KafkaSink
from connectors.kafka.source import KafkaPointsSource
from flows.backtest import backtest, final_rows
from flows.build import build_flow
from flows.config import DEMO_SITE, parse_site
from flows.metrics import REGISTRY
from tests.conftest import require_port
from tests.integration.test_edge_flow import demo_config, read_jsonl
from wire.records import to_ms

pytestmark = pytest.mark.integration
START = "2026-06-01T10:00:00Z"
DURATION_S = 1800


def _topics(bootstrap: str, *names: str, partitions: int = 3) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics(
        # The messages' event time is months ago: only unlimited retention keeps them.
        [
            NewTopic(
                n, num_partitions=partitions, replication_factor=1, config={"retention.ms": "-1"}
            )
            for n in names
        ]
    )
    for f in futures.values():
        f.result(30)


@pytest.fixture(scope="module")
def live(endpoints, tmp_path_factory):
    """Run the edge flow once: simulator (out of order, some late) -> raw topic + files."""
    host, port = endpoints.kafka_bootstrap.rsplit(":", 1)
    require_port(host, int(port), "Kafka")
    run = uuid.uuid4().hex[:8]
    raw_topic = f"edgeflow.test.{run}.raw"
    _topics(endpoints.kafka_bootstrap, raw_topic)
    out = tmp_path_factory.mktemp("live")
    cfg = demo_config(
        out,
        speed=0,
        start=START,
        duration_s=DURATION_S,
        ticks_per_batch=10,
        disorder_fraction=0.02,
        disorder_max_delay_ms=60_000,
    )
    cfg["sinks"].append(
        {
            "type": "kafka",
            "kafka": {"bootstrap_servers": endpoints.kafka_bootstrap},
            "topics": {"raw": raw_topic},
        }
    )
    run_main(build_flow(parse_site(cfg, base_dir=DEMO_SITE.parent)))
    return {"topic": raw_topic, "out": out, "cfg": cfg, "run": run}


def processor_config(endpoints, live, out: Path, **kafka_input) -> dict:
    cfg = json.loads(json.dumps(live["cfg"]))
    cfg["inputs"] = [
        {
            "type": "kafka",
            "kafka": {"bootstrap_servers": endpoints.kafka_bootstrap},
            "topic": live["topic"],
            **kafka_input,
        }
    ]
    cfg["sinks"] = [
        {
            "type": "file",
            "dir": str(out),
            "streams": ["raw", "aggregates", "events", "late", "dead_letters"],
        }
    ]
    return cfg


def test_all_points_reach_the_raw_topic_and_the_processor_matches_live(endpoints, live, tmp_path):
    schema = f"t_{live['run']}"
    cfg = processor_config(endpoints, live, tmp_path, bounded=True)
    cfg["sinks"].append(
        {
            "type": "timescaledb",
            "dsn": endpoints.pg_dsn,
            "schema": schema,
            "streams": ["aggregates", "events"],
        }
    )
    run_main(build_flow(parse_site(cfg, base_dir=DEMO_SITE.parent), name="process"))
    # The processor exported its consumer lag per partition; at the end it read everything.
    kafka_input = cfg["inputs"][0]
    lag = REGISTRY.get_sample_value(
        "edgeflow_kafka_consumer_lag_messages",
        {"input": kafka_input.get("id", "kafka"), "topic": kafka_input["topic"], "partition": "0"},
    )
    assert lag is not None and lag >= 0

    live_raw = read_jsonl(live["out"] / "raw.jsonl")
    replay_raw = read_jsonl(tmp_path / "raw.jsonl")
    assert len(live_raw) == len(replay_raw) == DURATION_S * 29
    key = lambda r: (r["path"], r["ts_ms"], r["value"])  # noqa: E731
    assert sorted(map(key, live_raw)) == sorted(map(key, replay_raw))

    live_aggs = final_rows(read_jsonl(live["out"] / "aggregates.jsonl"))
    proc_aggs = final_rows(read_jsonl(tmp_path / "aggregates.jsonl"))
    assert len(live_aggs) == (30 + 2) * 29
    strip = lambda r: {k: v for k, v in r.items() if k not in ("revision", "closed_by")}  # noqa: E731
    assert {k: strip(v) for k, v in proc_aggs.items()} == {
        k: strip(v) for k, v in live_aggs.items()
    }
    live_late = sorted(
        (d["payload"]["path"], d["payload"]["ts_ms"])
        for d in read_jsonl(live["out"] / "late.jsonl")
    )
    proc_late = sorted(
        (d["payload"]["path"], d["payload"]["ts_ms"]) for d in read_jsonl(tmp_path / "late.jsonl")
    )
    assert live_late == proc_late and len(live_late) > 0

    with psycopg.connect(endpoints.pg_dsn) as conn:
        rows = conn.execute(
            f"select path, window_ms, (extract(epoch from start_ts) * 1000)::bigint, count, sum "
            f'from "{schema}".aggregates'
        ).fetchall()
        assert len(rows) == len(live_aggs)
        for path, window_ms, start_ms, count, total in rows:
            want = live_aggs[(path, window_ms, start_ms)]
            assert count == want["count"] and total == pytest.approx(want["sum"], rel=1e-12)
        n_events = conn.execute(f'select count(*) from "{schema}".events').fetchone()[0]
        # The file also has the database sink's own connection event (it cannot write it
        # into the database it reports on: its own output is not among its inputs).
        file_events = read_jsonl(tmp_path / "events.jsonl")
        own = [e for e in file_events if e["rule"] == "timescaledb"]
        assert [e["state"] for e in own] == ["source_up"]
        assert n_events == len(
            {(e["kind"], e["rule"], e["path"], e["ts_ms"]) for e in file_events if e not in own}
        )
        conn.execute(f'drop schema "{schema}" cascade')


def test_backtest_reproduces_live_aggregates_and_is_repeatable(endpoints, live, tmp_path):
    cfg = processor_config(endpoints, live, tmp_path / "unused")
    cfg["sinks"] = [{"type": "console", "streams": []}]
    site = parse_site(cfg, base_dir=DEMO_SITE.parent)
    t1, t2 = to_ms("2026-06-01T10:15:00Z"), to_ms("2026-06-01T10:30:00Z")
    first = backtest(site, start_ms=t1, end_ms=t2, out=tmp_path / "a")
    second = backtest(
        site, start_ms=t1, end_ms=t2, out=tmp_path / "b", compare=tmp_path / "a" / "report.json"
    )
    assert second["comparison"]["same_aggregates"] is True
    assert (
        second["comparison"]["raised_only_now"] == second["comparison"]["raised_only_before"] == []
    )
    assert first["aggregates"] == {"1m": 15 * 29, "15m": 29}

    replay = final_rows(read_jsonl(tmp_path / "a" / "aggregates.jsonl"))
    live_aggs = final_rows(read_jsonl(live["out"] / "aggregates.jsonl"))
    strip = lambda r: {k: v for k, v in r.items() if k not in ("revision", "closed_by")}  # noqa: E731
    for key, row in replay.items():
        assert strip(row) == strip(live_aggs[key]), key

    # A different threshold is a different backtest: the comparison shows what changed.
    ops = [o for o in cfg["operators"]]
    for o in ops:
        if o["type"] == "alarm":
            o["rules"][0]["limit"] = 40
    changed = backtest(
        parse_site({**cfg, "operators": ops}, base_dir=DEMO_SITE.parent),
        start_ms=t1,
        end_ms=t2,
        out=tmp_path / "c",
        compare=tmp_path / "a" / "report.json",
    )
    assert changed["comparison"]["same_aggregates"] is True
    assert changed["comparison"]["raised_only_now"], "a lower alarm limit should raise more alarms"


def test_source_fails_fast_when_the_broker_is_down():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket closes
    src = KafkaPointsSource(
        KafkaInput(
            type="kafka",
            kafka={"bootstrap_servers": f"127.0.0.1:{port}"},
            topic="x",
            connect_timeout_s=2,
        )
    )
    t0 = time.monotonic()
    with pytest.raises(SourceError, match=f"127.0.0.1:{port} is unreachable"):
        src.list_parts()
    assert time.monotonic() - t0 < 10


def test_source_reports_a_missing_topic(endpoints):
    src = KafkaPointsSource(
        KafkaInput(
            type="kafka",
            kafka={
                "bootstrap_servers": endpoints.kafka_bootstrap,
                "config": {"allow.auto.create.topics": "false"},
            },
            topic=f"missing.{uuid.uuid4().hex}",
            connect_timeout_s=5,
        )
    )
    with pytest.raises(SourceError, match="does not exist"):
        src.list_parts()


def test_a_broker_that_is_down_makes_the_sink_spool_and_the_next_run_delivers(endpoints, tmp_path):
    """Store-and-forward: nothing raises while the broker is away; what is left at the end
    is kept (the run reports it and would exit non-zero) and delivered by the next run."""
    from confluent_kafka import Consumer

    from connectors.kafka.sink import SpoolSettings
    from flows import lifecycle

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    topic = f"edgeflow.test.{uuid.uuid4().hex[:8]}.spool"
    _topics(endpoints.kafka_bootstrap, topic, partitions=1)
    spool = SpoolSettings(tmp_path / "spool")
    down = KafkaConnection(bootstrap_servers=f"127.0.0.1:{port}")
    lifecycle.reset()
    part = KafkaSink(topic, down, spool, delivery_timeout_s=2, close_timeout_s=1).build_part(
        "s", "0", None
    )
    part.write_batch([("k", f"v{i}".encode(), None) for i in range(5)])
    part.snapshot()  # no exception: the messages are durable in the spool
    part.close()
    (failure,) = lifecycle.exit_failures()
    assert f"5 messages for Kafka topic {topic} were not delivered" in failure
    assert str(tmp_path / "spool") in failure
    lifecycle.reset()

    up = KafkaConnection(bootstrap_servers=endpoints.kafka_bootstrap)
    part = KafkaSink(topic, up, spool, delivery_timeout_s=10).build_part("s", "0", None)
    part.close()  # delivers what the earlier run left
    assert lifecycle.exit_failures() == []
    c = Consumer(
        {
            "bootstrap.servers": endpoints.kafka_bootstrap,
            "group.id": uuid.uuid4().hex,
            "auto.offset.reset": "earliest",
        }
    )
    c.subscribe([topic])
    got = []
    deadline = time.monotonic() + 20
    while len(got) < 5 and time.monotonic() < deadline:
        m = c.poll(0.5)
        if m is not None and m.error() is None:
            got.append(m.value())
    c.close()
    assert got == [f"v{i}".encode() for i in range(5)]


def test_undecodable_messages_become_dead_letters(endpoints, tmp_path):
    from confluent_kafka import Producer

    topic = f"edgeflow.test.{uuid.uuid4().hex[:8]}.bad"
    _topics(endpoints.kafka_bootstrap, topic, partitions=1)
    p = Producer({"bootstrap.servers": endpoints.kafka_bootstrap})
    p.produce(topic, key=b"acme/s/a/l/m/t", value=b"EFP1garbage")
    p.produce(topic, key=b"acme/s/a/l/m/t", value=b'{"ts_ms": [1], "value": [2.5]}')
    assert p.flush(10) == 0
    cfg = {
        "name": "t",
        "site": {"enterprise": "acme", "site": "s"},
        "inputs": [
            {
                "type": "kafka",
                "kafka": {"bootstrap_servers": endpoints.kafka_bootstrap},
                "topic": topic,
                "bounded": True,
            }
        ],
        "sinks": [{"type": "file", "dir": str(tmp_path), "streams": ["raw", "dead_letters"]}],
    }
    run_main(build_flow(parse_site(cfg)))
    dead = read_jsonl(tmp_path / "dead_letters.jsonl")
    assert len(dead) == 1 and "undecodable" in dead[0]["reason"]
    assert dead[0]["payload"] == {"hex": b"EFP1garbage".hex()}
    assert [r["value"] for r in read_jsonl(tmp_path / "raw.jsonl")] == [2.5]
