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
from tests.interop.servers import free_port

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _broker(endpoints) -> list[str]:
    return ["-h", endpoints.mqtt_host, "-p", str(endpoints.mqtt_port)]


def _sub(endpoints, topic: str, *args: str, out: Path | None = None) -> subprocess.Popen[str]:
    """Start mosquitto_sub on the plain listener (``-v``: topic and payload per line)."""
    return subprocess.Popen(
        ["mosquitto_sub", *_broker(endpoints), "-q", "1", "-t", topic, "-v", *args],
        stdout=subprocess.PIPE if out is None else out.open("w"),
        stderr=subprocess.PIPE,
        text=True,
    )


def _subscribed(endpoints, prefix: str, out: Path) -> None:
    """Return once the subscriber writing ``out`` receives ``{prefix}/_probe`` (it is live)."""

    def probe() -> bool:
        subprocess.run(
            ["mosquitto_pub", *_broker(endpoints), "-t", f"{prefix}/_probe", "-m", "{}"],
            check=True,
            timeout=30,
        )
        return "/_probe " in out.read_text()

    wait_until(probe, timeout_s=30, what="the subscriber to be subscribed", every_s=0.2)


def _messages(out: str) -> list[tuple[str, dict[str, Any]]]:
    got = []
    for line in out.splitlines():
        topic, _, payload = line.partition(" ")
        got.append((topic, json.loads(payload)))
    return got


def test_results_reach_an_independent_subscriber_over_tls_while_the_uplink_is_down(
    endpoints, tmp_path
):
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
            # The uplink is down for the whole run: its rows wait in its spool.
            {
                "type": "kafka",
                "kafka": {"bootstrap_servers": f"127.0.0.1:{free_port()}"},
                "topics": {"aggregates": "edgeflow.aggregates"},
                "close_timeout_s": 1,
            },
        ],
    }
    (tmp_path / "site.yaml").write_text(yaml.safe_dump(site))
    received_file = tmp_path / "received.txt"
    live = _sub(endpoints, f"{enterprise}/#", out=received_file)
    _subscribed(endpoints, enterprise, received_file)
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
        # The run says the uplink's rows were kept and exits non-zero; the screens got theirs.
        assert run.returncode != 0
        assert "were not delivered within 1 s" in run.stderr, run.stderr[-3000:]
        want = [
            (stream, _nulls(json.loads(line)))
            for stream in ("aggregates", "events")
            for line in (tmp_path / "out" / f"{stream}.jsonl").read_text().splitlines()
            # Connection events come from threads: when they reach which sink is timing.
            if json.loads(line).get("kind") != "source"
        ]
        assert any(s == "events" for s, _ in want), "the case must raise an event"
        # Every row, on its ISA-95 topic, as the subscriber read it (QoS 1: at least once).
        wait_until(
            lambda: (
                received_file.read_text().count("\n") - received_file.read_text().count("/_probe ")
                >= len(want)
            ),
            timeout_s=30,
            what=f"{len(want)} messages at the subscriber",
        )
        got = [m for m in _messages(received_file.read_text()) if not m[0].endswith("/_probe")]
    finally:
        live.kill()
    expected = {
        (topic_for(TEMPLATE, stream, row), json.dumps(row, sort_keys=True)) for stream, row in want
    }
    received = {(t, json.dumps(r, sort_keys=True)) for t, r in got if r.get("kind") != "source"}
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


def _decode_sparkplug(text: str) -> list[dict[str, Any]]:
    """Decode ``mosquitto_sub -F '%t %x'`` lines with Eclipse Tahu's JavaScript decoder."""
    done = subprocess.run(
        ["node", str(ROOT / "tests" / "interop" / "sparkplug_decode.js")],
        input=text,
        capture_output=True,
        text=True,
        check=True,
    )
    decoded: list[dict[str, Any]] = json.loads(done.stdout)
    return decoded


def test_sparkplug_output_births_data_rebirth_and_death_read_by_an_independent_decoder(
    endpoints, tmp_path
):
    from connectors.mqtt.output import MqttSinkConfig, spooled

    require_port(endpoints.mqtt_host, endpoints.mqtt_port, "mosquitto")
    group = f"g{uuid.uuid4().hex[:8]}"
    cfg = MqttSinkConfig(
        type="mqtt",
        host=endpoints.mqtt_host,
        port=endpoints.mqtt_port,
        client_id=f"sp-{group}",
        sparkplug={"group": group, "edge_node": "edge1"},
    )
    received = tmp_path / "received.txt"
    sub = _sub(endpoints, f"spBv1.0/{group}/#", "-F", "%t %x", out=received)
    _subscribed(endpoints, f"spBv1.0/{group}", received)
    path = "acme/s1/pv/array-1/inv-01/ac_power"
    t0 = 1_780_304_400_000
    aggs = [
        (
            "aggregates",
            {
                "path": path,
                "window": "1m",
                "window_ms": 60_000,
                "start_ms": t0 + k * 60_000,
                "unit": "kW",
                "mean": 40.0 + k,
                "min": 30.0 + k,
                "max": 50.0 + k,
                "energy": 0.5 + k,
                "energy_unit": "kWh",
            },
        )
        for k in range(2)
    ]
    event = (
        "events",
        {"path": path, "kind": "alarm", "rule": "hot", "ts_ms": t0 + 5000, "state": "raised"},
    )
    step = spooled(cfg, tmp_path / "spool")
    try:
        step.on_batch([*aggs, event])

        wait_until(
            lambda: "/DDATA/" in received.read_text(), timeout_s=30, what="NBIRTH, DBIRTH, DDATA"
        )
        # A host application asks for a rebirth (NCMD encoded by the independent library),
        # again until it is heard: the node subscribes to NCMD right after its births.
        rebirth = subprocess.run(
            ["node", str(ROOT / "tests" / "interop" / "sparkplug_decode.js"), "--rebirth"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        (tmp_path / "ncmd.bin").write_bytes(bytes.fromhex(rebirth))

        def reborn() -> bool:
            subprocess.run(
                [
                    "mosquitto_pub",
                    *_broker(endpoints),
                    "-q",
                    "1",
                    "-t",
                    f"spBv1.0/{group}/NCMD/edge1",
                    "-f",
                    str(tmp_path / "ncmd.bin"),
                ],
                check=True,
                timeout=30,
            )
            # Born again: a DBIRTH after a second NBIRTH (a device whose metrics grew is born
            # again on its own, so two DBIRTHs alone do not mean the rebirth happened).
            text = received.read_text()
            second = text.find("/NBIRTH/", text.find("/NBIRTH/") + 1)
            return second >= 0 and "/DBIRTH/" in text[second:]

        wait_until(reborn, timeout_s=30, what="NBIRTH and DBIRTH again", every_s=0.5)
        # Another client taking over the sink's client id cuts its session uncleanly: the
        # broker publishes the will, the node's NDEATH.
        subprocess.run(
            ["mosquitto_sub", *_broker(endpoints), "-i", cfg.client_id, "-t", "x/none", "-W", "1"],
            capture_output=True,
            timeout=30,
        )
        wait_until(lambda: "/NDEATH/" in received.read_text(), timeout_s=30, what="NDEATH")
    finally:
        step.on_eof()
        sub.kill()
    lines = [x for x in received.read_text().splitlines(keepends=True) if "/_probe " not in x]
    got = [m for m in _decode_sparkplug("".join(lines)) if "/NCMD/" not in m["topic"]]
    kinds = [m["topic"].split("/")[2] for m in got]
    # The writer may take the rows in one delivery or two: a device whose metrics grew is
    # born again before its data. The first session ends where the rebirth's NBIRTH starts.
    rebirth = kinds.index("NBIRTH", 1)
    first = got[:rebirth]
    assert kinds[0] == "NBIRTH" and kinds[1] == "DBIRTH" and "DDATA" in kinds[:rebirth]
    assert kinds[rebirth + 1] == "DBIRTH" and "NDEATH" in kinds
    assert got[1]["topic"] == f"spBv1.0/{group}/DBIRTH/edge1/pv.array-1.inv-01"
    # seq counts the node's messages from its birth; bdSeq ties the death to this session.
    assert [m["payload"]["seq"] for m in first] == [str(k) for k in range(len(first))]
    nbirth = got[0]["payload"]
    node_metrics = {m["name"]: m for m in nbirth["metrics"]}
    assert node_metrics["Node Control/Rebirth"]["value"] is False
    death = next(m["payload"] for m in got if "/NDEATH/" in m["topic"])
    assert death["metrics"][0]["value"] == node_metrics["bdSeq"]["value"]
    # The (last) birth names every metric with its alias, type and unit; data uses aliases.
    dbirth = [m["payload"] for m in first if "/DBIRTH/" in m["topic"]][-1]
    born = {m["name"]: m for m in dbirth["metrics"]}
    assert set(born) == {
        "ac_power/1m/mean",
        "ac_power/1m/min",
        "ac_power/1m/max",
        "ac_power/1m/energy",
        "events/alarm/hot/ac_power",
    }
    assert born["ac_power/1m/mean"]["type"] == "Double"
    assert born["ac_power/1m/mean"]["properties"]["engUnit"]["value"] == "kW"
    assert born["ac_power/1m/energy"]["properties"]["engUnit"]["value"] == "kWh"
    name_of = {m["alias"]: name for name, m in born.items()}
    data = [m for x in first if "/DDATA/" in x["topic"] for m in x["payload"]["metrics"]]
    assert all("name" not in m for m in data)
    values = [(name_of[m["alias"]], m["value"], int(m["timestamp"]) - t0) for m in data]
    assert sorted(values) == sorted(
        [
            (f"ac_power/1m/{f}", v + k, k * 60_000)
            for k in range(2)
            for f, v in (("mean", 40.0), ("min", 30.0), ("max", 50.0), ("energy", 0.5))
        ]
        + [("events/alarm/hot/ac_power", "raised", 5000)]
    )
