"""Metrics, health and the status line (no flow needed)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from connectors._io import Channel, Link
from flows import metrics
from flows.entry import process_index


@pytest.fixture(autouse=True)
def _fresh():
    metrics.reset_checks()
    yield
    metrics.reset_checks()


@pytest.mark.parametrize(
    ("reason", "label"),
    [
        ("value 12.5 outside [0, 10]", "value outside"),
        ("unit 'kW' is not convertible to 'V'", "unit is not convertible to"),
        ("past the reopen horizon (window 2026-06-01T10:00Z)", "past the reopen horizon"),
        ("acme/s1/pv/a1/inv1/x: not a number: 'n/a'", "not a number"),
        ("refused by the database (SQLSTATE 23514): new row violates", "refused by the database"),
    ],
)
def test_reasons_become_bounded_label_values(reason, label):
    assert metrics.reason_class("test-stage", reason) == label


def test_a_stage_keeps_at_most_20_reason_classes():
    labels = {metrics.reason_class("many", f"reason {chr(97 + i)}{chr(97 + i)}") for i in range(26)}
    assert len(labels) == 21 and "other" in labels


def sample(name, **labels):
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def _state(up, reason=""):
    return lambda: (up, reason)


def test_an_input_is_ready_while_one_connection_is_up_and_says_which_is_down():
    metrics.register_connection("plc", "h:502 device 1", _state(True))
    metrics.register_connection("plc", "h:502 device 7", _state(False, "timed out"))
    metrics.register_connection("dead", "h:1 device 3", _state(False, "refused"))
    metrics.register_connection("new", "h:2", _state(None))
    ok, body = metrics.ready()
    assert not ok and body["status"] == "not ready"
    assert body["components"] == [
        {
            "kind": "input",
            "name": "plc",
            "ready": True,
            "reason": "degraded: h:502 device 7: timed out",
        },
        {"kind": "input", "name": "dead", "ready": False, "reason": "h:1 device 3: refused"},
        {"kind": "input", "name": "new", "ready": False, "reason": "h:2: connecting"},
    ]


def test_links_report_their_state_to_metrics_and_health():
    events = []
    link = Link("plc", "h:502 device 9", "acme/s1/plc", events.append)
    where = {"component": "plc", "endpoint": "h:502 device 9"}
    before = sample("edgeflow_reconnects_total", **where)
    assert sample("edgeflow_connection_up", **where) == 0 and not metrics.ready()[0]
    link.up()
    assert sample("edgeflow_connection_up", **where) == 1 and metrics.ready()[0]
    link.down("timed out")
    link.up()
    assert sample("edgeflow_reconnects_total", **where) == before + 1
    assert [e.state for e in events] == ["source_up", "source_down", "source_up"]


def test_a_full_channel_counts_its_drops():
    ch: Channel[int] = Channel(2, "drop_oldest")
    ch.name = "test-drops"
    before = sample("edgeflow_input_overflow_dropped_total", input="test-drops")
    for i in range(5):
        ch.put(i)
    assert sample("edgeflow_input_overflow_dropped_total", input="test-drops") == before + 3
    assert ch.drain(10) == [3, 4]


def test_the_endpoint_serves_metrics_liveness_and_readiness():
    metrics.register_connection("plc", "h:502", _state(False, "timed out"))
    server = metrics.HealthServer("127.0.0.1", 0)
    base = f"http://{server.address}"
    try:
        with urllib.request.urlopen(f"{base}/metrics") as r:
            text = r.read().decode()
            assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        assert "# TYPE edgeflow_input_points_total counter" in text
        assert "process_resident_memory_bytes" in text
        assert "_created" not in text
        with urllib.request.urlopen(f"{base}/health/live") as r:
            assert json.load(r) == {"status": "live"}
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"{base}/health/ready")
        assert e.value.code == 503
        assert json.load(e.value)["components"][0]["reason"] == "h:502: timed out"
    finally:
        server.close()


def test_the_status_line_gives_rates_lag_and_buffers():
    import re

    def buffered(text):
        return int(re.search(r"buffered ([\d,]+) rows", text).group(1).replace(",", ""))

    # The registry is the process's: other tests' flows may have left gauges behind.
    status = metrics.StatusLogger(60)
    first, before = status.line(10, {})
    metrics.INPUT_POINTS.labels("status-test").inc(1000)
    metrics.SINK_BUFFERED.labels("status-test").set(250)
    text, _ = status.line(10, before)
    assert text.startswith("status: in 100 points/s, out 0 rows/s, dead letters 0, late 0")
    assert "(last 10 s); max input lag " in text
    assert buffered(text) == buffered(first) + 250
    metrics.SINK_BUFFERED.labels("status-test").set(0)


@pytest.mark.parametrize(
    ("argv", "index"),
    [
        (["bytewax.run", "flows.edge"], 0),
        (["bytewax.run", "flows.process", "-i", "1", "-a", "h:1;h:2"], 1),
        (["bytewax.run", "flows.process", "--process-id=2"], 2),
    ],
)
def test_each_process_of_a_cluster_serves_on_its_own_port(argv, index):
    assert process_index(argv) == index


def test_a_sink_is_ready_while_it_buffers_within_its_spool_and_not_beyond(tmp_path):
    from connectors._spool import Spool
    from connectors._spooled import Writer

    spool = Spool(tmp_path, max_bytes=10_000, overflow="drop_newest")
    writer = Writer(spool, lambda _: None, name="db", endpoint="pg", path="acme/s1")
    ok, body = metrics.ready()
    assert ok and body["components"] == [
        {"kind": "sink", "name": "db", "ready": True, "reason": ""}
    ]
    writer.link.down("connection refused")
    spool.append(b"x" * 4000, 0)
    assert metrics.ready()[1]["components"][0]["reason"] == ("buffering 1 rows: connection refused")
    spool.append(b"x" * 5000, 0)  # over 90% of max_bytes
    ok, body = metrics.ready()
    assert not ok
    assert body["components"][0]["reason"] == ("connection refused; spool of 2 rows is 90% full")
    spool.close()


def test_inputs_without_connections_are_ready_and_named():
    from flows.build import build_flow
    from flows.config import DEMO_SITE, load_site

    build_flow(load_site(DEMO_SITE))
    ok, body = metrics.ready()
    assert (
        ok and {"kind": "input", "name": "sim", "ready": True, "reason": ""} in (body["components"])
    )


def test_a_port_that_cannot_be_bound_is_a_config_error(tmp_path):
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = subprocess.run(
            [sys.executable, "-m", "bytewax.run", "flows.edge"],
            env={
                **os.environ,
                "PYTHONPATH": str(root),
                "EDGEFLOW_METRICS_LISTEN": f"127.0.0.1:{port}",
            },
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert run.returncode == 2
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("edgeflow: ") and "observability.listen: cannot listen on" in last
