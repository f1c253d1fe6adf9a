"""The OPC UA input against an independent OPC UA server (node-opcua from npm, not asyncua).

The server (tests/interop/opcua_server.js) has the layouts of real plants: a device object
with its variables under it, a folder tree of varying depth, a static setpoint whose source
time is 8 days old, a String variable and a browse name containing '/'. Speed counts up every
update, so a gap in the received values is a lost sample.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from asyncua import Client, ua

from connectors.opcua.certs import ensure_certificate
from connectors.opcua.config import OpcUaInput
from connectors.opcua.source import OpcUaSource
from tests.integration.test_edge_flow import read_jsonl
from tests.interop.servers import NodeServer, free_port
from wire.records import DeadLetter, Event, PointBatch, TextPoints

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def source(url: str, **kw) -> OpcUaSource:
    return OpcUaSource(OpcUaInput(type="opcua", url=url, **kw), "acme", "s1")


def run_parts(parts, seconds: float, until=None) -> list[tuple[float, object]]:
    got: list[tuple[float, object]] = []
    deadline = time.monotonic() + seconds
    live = list(parts)
    while live and time.monotonic() < deadline:
        for part in list(live):
            try:
                got += [(time.monotonic(), i) for i in part.next_batch()]
            except StopIteration:
                live.remove(part)
        if until is not None and until(got):
            break
        time.sleep(0.02)
    return got


def points(items) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = {}
    for _, b in items:
        if isinstance(b, PointBatch):
            for i, t, v in zip(b.tag_idx.tolist(), b.ts_ms.tolist(), b.value.tolist(), strict=True):
                out.setdefault(b.tags[i].path, []).append((t, v))
    return out


@pytest.fixture
def server():
    srv = NodeServer("opcua_server.js", "--update-ms", "100").start()
    yield srv
    srv.stop()


def test_browse_maps_a_device_object_a_folder_tree_and_odd_names(server):
    rule = {
        "root": "i=85",  # the Objects folder itself: the Server object must be skipped
        "paths": [
            "Plant/{area}/{line}/*/{machine}/{tag+}",
            "Plant/{area}/{line}/{machine}/{tag}",
            "{machine}/{tag}",
        ],
        "area": "utilities",
        "line": "water",
    }
    part = source(server.ready, browse=[rule], interval_ms=100).build_part("s", "p", None)
    items = run_parts([part], 20, until=lambda got: len(points(got)) >= 8)
    part.close()
    assert set(points(items)) == {
        "acme/s1/utilities/water/Pump-07/Speed",
        "acme/s1/utilities/water/Pump-07/Running",
        "acme/s1/utilities/water/Pump-07/Setpoint",
        "acme/s1/utilities/water/Pump-07/Flow_Rate",  # browse name "Flow/Rate", sanitised
        "acme/s1/Area-A/Line-1/Mixer-01/Temperature",
        "acme/s1/Area-A/Line-1/Mixer-01/Level",
        "acme/s1/Area-A/Line-1/Robot-3/Axis-1.Torque",
    }
    texts = [p for _, t in items if isinstance(t, TextPoints) for p in t.points]
    assert {(p.path, p.value) for p in texts} == {("acme/s1/utilities/water/Pump-07/Mode", "AUTO")}
    assert not [i for _, i in items if isinstance(i, DeadLetter)]
    assert [i.state for _, i in items if isinstance(i, Event)] == ["source_up"]


def test_variables_no_pattern_maps_are_one_dead_letter_each_never_a_crash(server):
    rule = {"root": "ns=1;s=Plant", "paths": ["{area}/{line}/{machine}/{tag}"]}
    part = source(server.ready, browse=[rule], interval_ms=100).build_part("s", "p", None)
    items = run_parts([part], 20, until=lambda got: len(points(got)) >= 2)
    part.close()
    assert set(points(items)) == {
        "acme/s1/Area-A/Line-1/Mixer-01/Temperature",
        "acme/s1/Area-A/Line-1/Mixer-01/Level",
    }
    dead = [i for _, i in items if isinstance(i, DeadLetter)]
    assert len(dead) == 1 and "Area-A/Line-1/Cell-2/Robot-3/Axis-1/Torque" in dead[0].reason


@pytest.mark.parametrize("mode", ["subscription", "polling"])
def test_static_tags_keep_their_current_value_and_polling_is_not_an_error(server, tmp_path, mode):
    site = {
        "name": "static",
        "site": {"enterprise": "acme", "site": "s1"},
        "inputs": [
            {
                "type": "opcua",
                "url": server.ready,
                "mode": mode,
                "interval_ms": 200,
                "browse": [{"root": "ns=1;s=Pump-07", "area": "u", "line": "w"}],
                "max_samples": 40,
            }
        ],
        "operators": [{"type": "validate"}],  # max_past_ms: 7 days; the setpoint is 8 days old
        "sinks": [{"type": "file", "dir": str(tmp_path), "streams": ["points", "dead_letters"]}],
    }
    from bytewax.testing import run_main

    from flows.build import build_flow
    from flows.config import parse_site

    t0 = time.time() * 1000
    run_main(build_flow(parse_site(site)))
    got = read_jsonl(tmp_path / "points.jsonl")
    setpoints = [r for r in got if r["tag"] == "Setpoint"]
    assert setpoints and all(r["value"] == 42.5 for r in setpoints)
    assert all(r["ts_ms"] >= t0 for r in setpoints)  # stamped when read, not 8 days ago
    if mode == "polling":  # one sample per poll, at poll time: never a duplicate
        assert len(setpoints) >= 4
        assert len({r["ts_ms"] for r in setpoints}) == len(setpoints)
    assert read_jsonl(tmp_path / "dead_letters.jsonl") == []


def test_an_untrusted_certificate_is_named_and_retried_until_trusted(tmp_path):
    pki = tmp_path / "pki"
    srv = NodeServer(
        "opcua_server.js", "--pki", str(pki), "--user", "op", "--password", "pw"
    ).start()
    cert, key = ensure_certificate(tmp_path / "client", name="client")
    part = source(
        srv.ready,
        browse=["ns=1;s=Pump-07"],
        security="SignAndEncrypt",
        cert=str(cert),
        key=str(key),
        username="op",
        password="pw",
        rejected_retry_s=2,
    ).build_part("s", "p", None)
    try:
        first = run_parts([part], 15, until=lambda got: any(isinstance(i, Event) for _, i in got))
        (down,) = [i for _, i in first if isinstance(i, Event)]
        assert down.state == "source_down"
        assert f"rejected the client certificate {cert.resolve()}" in down.message
        assert "trusted/certs" in down.message
        # The administrator trusts it: the next (slow) retry connects, no restart needed.
        rejected = list((pki / "rejected").glob("*"))
        assert len(rejected) == 1
        shutil.move(str(rejected[0]), pki / "trusted" / "certs")
        second = run_parts([part], 15, until=lambda got: bool(points(got)))
        assert [i.state for _, i in second if isinstance(i, Event)] == ["source_up"]
        assert points(second)
    finally:
        part.close()
        srv.stop()


def test_rejected_credentials_are_one_clear_error(tmp_path):
    srv = NodeServer("opcua_server.js", "--user", "op", "--password", "right").start()
    part = source(
        srv.ready, browse=["ns=1;s=Pump-07"], username="op", password="wrong", rejected_retry_s=60
    ).build_part("s", "p", None)
    try:
        items = run_parts([part], 6)
    finally:
        part.close()
        srv.stop()
    events = [i for _, i in items if isinstance(i, Event)]
    assert len(events) == 1  # slow retry: not one event (or log line) per attempt
    assert "the server rejected user op" in events[0].message
    assert "check username and password" in events[0].message


def test_data_is_back_within_about_2_s_of_a_server_restart(server):
    part = source(
        server.ready, browse=["ns=1;s=Pump-07"], interval_ms=100, reconnect_max_s=2.0
    ).build_part("s", "p", None)
    try:
        run_parts([part], 15, until=lambda got: bool(points(got)))
        server.restart(down_s=8)
        back = time.monotonic()
        after = run_parts(
            [part], 15, until=lambda got: "acme/s1/opcua/Pump-07/Speed" in points(got)
        )
    finally:
        part.close()
    first = min(t for t, i in after if isinstance(i, PointBatch))
    assert first - back < 3.0  # the backoff is capped at 2 s, plus session and subscription setup
    states = [i.state for _, i in after if isinstance(i, Event)]
    assert states[-1] == "source_up"


async def _session_count(url: str) -> int:
    async with Client(url) as c:
        node = c.get_node(
            ua.NodeId(
                ua.ObjectIds.Server_ServerDiagnostics_ServerDiagnosticsSummary_CurrentSessionCount
            )
        )
        return int(await node.read_value())


def test_a_dead_modbus_device_beside_a_live_subscription_loses_nothing(server, tmp_path):
    modbus = NodeServer("modbus_server.js", "--silent", "9").start()
    dev = lambda unit, name: {  # noqa: E731
        "device_id": unit,
        "area": "a",
        "line": "l",
        "machine": name,
        "interval_ms": 200,
        "registers": [{"tag": "x", "address": 1}],
    }
    site = {
        "name": "mixed",
        "site": {"enterprise": "acme", "site": "s1"},
        "inputs": [
            {
                "type": "opcua",
                "url": server.ready,
                "interval_ms": 100,
                "sampling_interval_ms": 50,
                "browse": [{"root": "ns=1;s=Pump-07", "area": "u", "line": "w"}],
            },
            {
                "type": "modbus",
                "id": "dead",
                "host": "127.0.0.1",
                "port": free_port(),
                "devices": [dev(1, "dead-01")],
            },
            {
                "type": "modbus",
                "id": "gw",
                "host": "127.0.0.1",
                "port": modbus.port,
                "timeout_s": 2,
                "devices": [dev(9, "silent-09"), dev(1, "live-01")],
            },
        ],
        "sinks": [{"type": "file", "dir": str(tmp_path / "out"), "streams": ["raw", "events"]}],
    }
    (tmp_path / "site.yaml").write_text(yaml.safe_dump(site))
    proc = subprocess.Popen(
        [sys.executable, "-m", "bytewax.run", "flows.edge"],
        env={**os.environ, "PYTHONPATH": str(ROOT), "EDGEFLOW_SITE": str(tmp_path / "site.yaml")},
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(12)  # the measurement window, not a synchronisation
        assert asyncio.run(_session_count(server.ready)) == 2  # the flow's session and ours
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        stop_s = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
        modbus.stop()
    assert proc.returncode == 0, err[-2000:]
    assert stop_s < 2.0
    # The session was closed on exit: only our own check session remains.
    assert asyncio.run(_session_count(server.ready)) == 1, err[-3000:]
    assert "OPC UA session closed" in err
    raw = read_jsonl(tmp_path / "out" / "raw.jsonl")
    speed = sorted(r["value"] for r in raw if r["path"] == "acme/s1/u/w/Pump-07/Speed")
    # Speed counts up every 100 ms; sampled at 50 ms and queued, every value must arrive.
    assert len(speed) >= 80
    missing = (speed[-1] - speed[0] + 1) - len(set(speed))
    assert missing == 0, f"{missing} samples lost of {len(speed)}"
    live = [r for r in raw if r["path"] == "acme/s1/a/l/live-01/x"]
    assert len(live) >= 45  # 200 ms polls for ~12 s, undisturbed by the silent unit beside it
    events = read_jsonl(tmp_path / "out" / "events.jsonl")
    downs = sorted(e["path"] for e in events if e["state"] == "source_down")
    assert downs == ["acme/s1/a/l/dead-01", "acme/s1/a/l/silent-09"]
