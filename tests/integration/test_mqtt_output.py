"""The MQTT output sink against the real mosquitto, read by an independent client.

The subscriber is ``mosquitto_sub`` (libmosquitto, Debian's ``mosquitto-clients``), not
paho, which the sink uses. The flow publishes over the TLS listener with a password; the
subscriber reads the broker's plain listener, as a local screen on the plant network would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from connectors.mqtt.output import topic_for
from tests.browser import Browser
from tests.conftest import require_port
from tests.faults import wait_until

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _sub(endpoints, topic: str, *args: str, out: Path | None = None) -> subprocess.Popen[str]:
    """Start mosquitto_sub on the plain listener (``-v``: topic and payload per line)."""
    cmd = ["mosquitto_sub", "-h", endpoints.mqtt_host, "-p", str(endpoints.mqtt_port)]
    return subprocess.Popen(
        [*cmd, "-q", "1", "-t", topic, "-v", *args],
        stdout=subprocess.PIPE if out is None else out.open("w"),
        stderr=subprocess.PIPE,
        text=True,
    )


def _messages(out: str) -> list[tuple[str, dict[str, Any]]]:
    got = []
    for line in out.splitlines():
        topic, _, payload = line.partition(" ")
        got.append((topic, json.loads(payload)))
    return got


def test_results_reach_an_independent_subscriber_over_tls_with_a_password(endpoints, tmp_path):
    require_port(endpoints.mqtt_host, endpoints.mqtt_port, "mosquitto")
    require_port(endpoints.mqtt_host, endpoints.mqtt_tls_port, "mosquitto (TLS)")
    enterprise = f"e{uuid.uuid4().hex[:8]}"
    site = {
        "name": "hmi",
        "site": {"enterprise": enterprise, "site": "s1"},
        "inputs": [
            {
                "type": "simulator",
                "start": "2026-06-01T10:00:00Z",
                "speed": 0,
                "duration_s": 300,
                "ticks_per_batch": 30,
                "faults": [
                    {"kind": "power_spike", "asset": "panel-01", "start_s": 100, "duration_s": 30}
                ],
            }
        ],
        "operators": [
            {"type": "aggregate", "idle_close": False},
            {
                "type": "anomaly",
                "rules": [
                    {
                        "id": "spike",
                        "kind": "spike",
                        "tags": "*/load/*/active_power",
                        "lookback_ms": 60000,
                        "factor": 2.0,
                        "min_baseline": 1.0,
                    }
                ],
            },
        ],
        "sinks": [
            {
                "type": "mqtt",
                "host": endpoints.mqtt_host,
                "port": endpoints.mqtt_tls_port,
                "tls_ca": endpoints.mqtt_ca,
                "username": "edgeflow",
                "password": "${EDGEFLOW_TEST_MQTT_PASSWORD}",
                "client_id": f"out-{enterprise}",
                "retain": True,
                "streams": ["aggregates", "events"],
            },
            {"type": "file", "dir": str(tmp_path / "out"), "streams": ["aggregates", "events"]},
        ],
    }
    (tmp_path / "site.yaml").write_text(yaml.safe_dump(site))
    received_file = tmp_path / "received.txt"
    live = _sub(endpoints, f"{enterprise}/#", out=received_file)
    try:
        run = subprocess.run(
            [sys.executable, "-m", "bytewax.run", "flows.edge"],
            env={
                **os.environ,
                "PYTHONPATH": str(ROOT),
                "EDGEFLOW_SITE": str(tmp_path / "site.yaml"),
                "EDGEFLOW_TEST_MQTT_PASSWORD": "edgeflow",
            },
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert run.returncode == 0, run.stderr[-3000:]
        want = [
            (stream, _nulls(json.loads(line)))
            for stream in ("aggregates", "events")
            for line in (tmp_path / "out" / f"{stream}.jsonl").read_text().splitlines()
            # The MQTT sink's own connection events come after its subscription.
            if json.loads(line).get("kind") != "source"
        ]
        assert any(s == "events" for s, _ in want), "the case must raise an event"
        # Every row, on its ISA-95 topic, as the subscriber read it (QoS 1: at least once).
        wait_until(
            lambda: received_file.read_text().count("\n") >= len(want),
            timeout_s=30,
            what=f"{len(want)} messages at the subscriber",
        )
        got = _messages(received_file.read_text())
    finally:
        live.kill()
    expected = {
        (topic_for(TEMPLATE, stream, row), json.dumps(row, sort_keys=True)) for stream, row in want
    }
    received = {(t, json.dumps(r, sort_keys=True)) for t, r in got}
    assert expected - received == set()
    assert received - expected == set()
    assert f"{enterprise}/s1/pv/array-1/inv-01/_edgeflow/aggregates/ac_power" in {t for t, _ in got}
    assert f"{enterprise}/s1/load/lv-panel/panel-01/_edgeflow/events/active_power" in {
        t for t, _ in got
    }
    # Retained: a screen that connects now gets the newest row of a topic at once.
    topic = f"{enterprise}/s1/pv/array-1/inv-01/_edgeflow/aggregates/ac_power"
    late = _sub(endpoints, topic, "-C", "1", "-W", "10")
    out, err = late.communicate(timeout=20)
    [(t, row)] = _messages(out)
    newest = [r for s, r in want if s == "aggregates" and topic_for(TEMPLATE, s, r) == topic][-1]
    assert (t, row) == (topic, newest), err


TEMPLATE = "{enterprise}/{site}/{area}/{line}/{machine}/_edgeflow/{stream}/{tag}"


def _nulls(row: dict[str, Any]) -> dict[str, Any]:
    return {k: None if isinstance(v, float) and v != v else v for k, v in row.items()}


def test_a_browser_page_shows_what_the_sink_publishes_over_websockets(endpoints, tmp_path):
    """The HMI page in headless Chromium, subscribed through mosquitto's WebSocket listener."""
    from connectors.mqtt.output import MqttSinkConfig, spooled

    require_port(endpoints.mqtt_host, endpoints.mqtt_ws_port, "mosquitto (WebSocket)")
    enterprise = f"e{uuid.uuid4().hex[:8]}"
    cfg = MqttSinkConfig(
        type="mqtt", host=endpoints.mqtt_host, port=endpoints.mqtt_port, retain=True
    )
    path = f"{enterprise}/s1/pv/array-1/inv-01"
    rows = [
        (
            "aggregates",
            {
                "path": f"{path}/ac_power",
                "window_ms": 60_000,
                "start": "2026-06-01T10:00:00Z",
                "unit": "kW",
                "mean": 41.25,
                "energy": 0.6875,
                "energy_unit": "kWh",
            },
        ),
        (
            "events",
            {
                "kind": "alarm",
                "rule": "over-temperature",
                "path": f"{path}/temperature",
                "ts": "2026-06-01T10:01:00Z",
                "state": "raised",
                "message": "temperature 81 > 80",
            },
        ),
    ]
    step = spooled(cfg, tmp_path / "spool")
    step.on_batch(rows)
    step.on_eof()
    assert step.written == 2
    page = (ROOT / "infra" / "hmi" / "index.html").as_uri()
    url = f"{page}?ws=ws://127.0.0.1:{endpoints.mqtt_ws_port}&topic={enterprise}/%23"
    agg = f"{path}/_edgeflow/aggregates/ac_power"
    event = f"{path}/_edgeflow/events/temperature"
    browser = Browser(url)
    try:
        rows = wait_until(
            lambda: browser.evaluate(ROWS) if len(browser.evaluate(ROWS) or []) >= 2 else None,
            timeout_s=30,
            what="the page to show the two topics",
        )
        status = browser.evaluate("document.getElementById('status').textContent")
    finally:
        browser.close()
    assert status == f"subscribed to {enterprise}/# on ws://127.0.0.1:{endpoints.mqtt_ws_port}"
    assert sorted(rows) == sorted(
        [
            [agg, "", "mean 41.250 kW, 0.6875 kWh", "2026-06-01T10:00:00Z"],
            [event, "raised", "raised: temperature 81 > 80", "2026-06-01T10:01:00Z"],
        ]
    )


# Each table row as [topic, class, value, time].
ROWS = """[...document.querySelectorAll('#rows tr')].map(
  tr => [tr.dataset.topic, tr.className, tr.cells[1].textContent, tr.cells[2].textContent])"""
