"""The Modbus input against an independent Modbus server (modbus-serial from npm, not pymodbus).

The server's registers are a pure function of unit and address (value = unit * 1000 + address),
so the expected values come from Python's struct module, not from the connector's codec.
"""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from connectors.modbus.config import ModbusInput
from connectors.modbus.source import ModbusSource
from tests.interop.servers import NodeServer, free_port
from wire.records import DeadLetter, Event, PointBatch

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def reg(unit: int, addr: int) -> int:
    return (unit * 1000 + addr) % 65536


def modbus(port: int, *devices: dict, **kw) -> ModbusInput:
    return ModbusInput(type="modbus", host="127.0.0.1", port=port, devices=devices, **kw)


def device(unit: int, registers: list[dict], interval_ms: int = 100, machine: str = "") -> dict:
    return {
        "device_id": unit,
        "area": "a",
        "line": "l",
        "machine": machine or f"dev-{unit}",
        "interval_ms": interval_ms,
        "registers": registers,
    }


def run_parts(parts, seconds: float) -> list[tuple[float, object]]:
    """Drain partitions like a worker does, for ``seconds``; (arrival time, item) pairs."""
    got: list[tuple[float, object]] = []
    deadline = time.monotonic() + seconds
    live = list(parts)
    while live and time.monotonic() < deadline:
        for part in list(live):
            try:
                batch = part.next_batch()
            except StopIteration:
                live.remove(part)
                continue
            got += [(time.monotonic(), item) for item in batch]
        time.sleep(0.01)
    return got


@pytest.fixture
def server():
    srv = NodeServer("modbus_server.js", "--silent", "7", "--refuse", "1:12").start()
    yield srv
    srv.stop()


def test_values_types_and_orders_match_an_independent_server(server):
    regs = [
        {"tag": "u16", "address": 3, "dtype": "uint16"},
        {"tag": "i16", "address": 4, "dtype": "int16", "scale": 0.5},
        {"tag": "u32", "address": 20, "dtype": "uint32", "order": "ABCD"},
        {"tag": "u32_cdab", "address": 22, "dtype": "uint32", "order": "CDAB"},
        {"tag": "f32_badc", "address": 24, "dtype": "float32", "order": "BADC"},
        {"tag": "f64_dcba", "address": 30, "dtype": "float64", "order": "DCBA"},
        {"tag": "coil", "address": 5, "table": "coil"},
        {"tag": "inp", "address": 40, "table": "input"},
    ]
    src = ModbusSource(modbus(server.port, device(2, regs), max_polls=2), "acme", "s1")
    part = src.build_part("s", src.list_parts()[0], None)
    got = [i for _, i in run_parts([part], 3) if isinstance(i, PointBatch)]
    part.close()
    values = {
        b.tags[t].tag: v
        for b in got
        for t, v in zip(b.tag_idx.tolist(), b.value.tolist(), strict=True)
    }

    def be(*words: int) -> bytes:
        return b"".join(struct.pack(">H", w) for w in words)

    r = lambda a: reg(2, a)  # noqa: E731
    swap = lambda w: ((w & 0xFF) << 8) | (w >> 8)  # noqa: E731
    assert values == pytest.approx(
        {
            "u16": r(3),
            "i16": struct.unpack(">h", be(r(4)))[0] * 0.5,
            "u32": struct.unpack(">I", be(r(20), r(21)))[0],
            "u32_cdab": struct.unpack(">I", be(r(23), r(22)))[0],
            "f32_badc": struct.unpack(">f", be(swap(r(24)), swap(r(25))))[0],
            "f64_dcba": struct.unpack(">d", be(*(swap(r(a)) for a in (33, 32, 31, 30))))[0],
            "coil": 1.0,
            "inp": r(40),
        },
        rel=1e-12,
    )


def test_a_refused_register_in_a_coalesced_request_blanks_only_itself(server):
    regs = [{"tag": f"r{a}", "address": a} for a in (10, 11, 12, 13, 14)]
    src = ModbusSource(modbus(server.port, device(1, regs, interval_ms=50)), "acme", "s1")
    part = src.build_part("s", src.list_parts()[0], None)
    items = run_parts([part], 2.0)
    part.close()
    batches = [i for _, i in items if isinstance(i, PointBatch)]
    dead = [i for _, i in items if isinstance(i, DeadLetter)]
    assert len(batches) >= 20
    for b in batches:
        # Every poll delivers the four good neighbours of the refused register.
        assert sorted(b.tags[t].tag for t in b.tag_idx.tolist()) == ["r10", "r11", "r13", "r14"]
        assert sorted(b.value.tolist()) == [reg(1, a) for a in (10, 11, 13, 14)]
    # One dead letter for the episode, not one per poll.
    assert len(dead) == 1
    assert "refused holding 12+1 (r12): exception 2 (first of an episode)" in dead[0].reason


def test_a_silent_unit_id_delays_only_itself(server):
    live = device(1, [{"tag": "x", "address": 1}], interval_ms=100, machine="live")
    silent = device(7, [{"tag": "x", "address": 1}], interval_ms=100, machine="silent")
    src = ModbusSource(modbus(server.port, live, silent, timeout_s=1.0), "acme", "s1")
    parts = [src.build_part("s", p, None) for p in src.list_parts()]
    items = run_parts(parts, 5.0)
    for p in parts:
        p.close()
    live_batches = [i for _, i in items if isinstance(i, PointBatch)]
    assert {b.tags[0].path for b in live_batches} == {"acme/s1/a/l/live/x"}
    # 100 ms polls for 5 s: about 50; the silent device costs the live one nothing.
    assert len(live_batches) >= 45
    lateness = np.asarray(parts[0].lateness_ms)
    assert np.percentile(lateness, 99) < 100
    events = [i for _, i in items if isinstance(i, Event)]
    downs = [e for e in events if e.state == "source_down"]
    assert [e.path for e in downs] == ["acme/s1/a/l/silent"]  # one event, not one per attempt
    assert "no response from device id 7" in downs[0].message


def test_a_device_that_comes_back_is_polled_again_within_the_backoff_cap():
    port = free_port()
    src = ModbusSource(
        modbus(port, device(1, [{"tag": "x", "address": 1}], interval_ms=100), reconnect_max_s=2.0),
        "acme",
        "s1",
    )
    part = src.build_part("s", src.list_parts()[0], None)
    before = run_parts([part], 6.0)  # nothing listens: refused, retried with backoff
    srv = NodeServer("modbus_server.js", port=port).start()
    back_at = time.monotonic()
    try:
        after = run_parts([part], 4.0)
    finally:
        srv.stop()
        part.close()
    states = [i.state for _, i in before + after if isinstance(i, Event)]
    assert states == ["source_down", "source_up"]
    first = min(t for t, i in after if isinstance(i, PointBatch))
    assert first - back_at < 2.5  # reconnect attempts are at most reconnect_max_s apart


def test_ctrl_c_stops_a_flow_within_2_s_whatever_the_devices_do(server, tmp_path):
    site = {
        "name": "stop",
        "site": {"enterprise": "acme", "site": "s1"},
        "inputs": [
            {
                "type": "modbus",
                "host": "127.0.0.1",
                "port": server.port,
                "timeout_s": 3,
                "devices": [
                    device(1, [{"tag": "x", "address": 1}]),
                    device(7, [{"tag": "x", "address": 1}], machine="silent"),
                ],
            },
            {
                "type": "modbus",
                "id": "dead",
                "host": "127.0.0.1",
                "port": free_port(),
                "devices": [device(3, [{"tag": "x", "address": 1}])],
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
    events = tmp_path / "out" / "events.jsonl"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (
        not events.exists() or events.read_text().count('"source_down"') < 2
    ):
        time.sleep(0.1)
    # Now the silent device's thread is inside a 3 s read and the dead address is backing off.
    time.sleep(0.5)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert time.monotonic() - t0 < 2.0, err[-2000:]
    assert proc.returncode == 0, err[-2000:]
    text = events.read_text()
    assert text.count('"source_down"') == 2  # the silent unit and the dead address, once each
    assert (tmp_path / "out" / "raw.jsonl").stat().st_size > 0
