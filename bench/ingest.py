"""Case 3: protocol ingest at plant scale, each against a realistic server, each beside the raw
client library's own rate measured in the same run (``python -m bench.ingest CASE``).

- ``opcua``: node-opcua server with 10,000 variables; the OPC UA input subscribes to all of
  them. Offered load 1 Hz (the plant case: every value must arrive) and 10 Hz (capacity).
  Reference: an asyncua subscription that only counts notifications.
- ``mqtt``: 200,000 JSON messages waiting for a persistent QoS 1 session in mosquitto; the
  MQTT input drains them. Reference: a paho client that only counts and acknowledges.
- ``sparkplug``: 600 Sparkplug B DDATA messages of 1,000 metrics each, the same way.
  Reference: paho receiving plus protobuf decoding, nothing else.
- ``modbus``: 100 Modbus TCP units x 100 holding registers polled at 1 Hz for 60 s from a
  modbus-serial server (one Node process). Reports polls on time and p99 lateness.
  Reference: one pymodbus client polling the same requests back to back.

Throughput is measured through a Bytewax flow (the input, then a sink that counts) on one
worker; each case prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import threading
import time
import uuid
from typing import Any

import numpy as np

__all__ = ["main"]

MQTT_PORT = 11883


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _Counter:
    """A Bytewax sink that counts points (and records when each batch arrived)."""

    def __init__(self) -> None:
        self.points = 0
        self.first = 0.0
        self.last = 0.0
        self.lock = threading.Lock()
        self.arrivals: list[tuple[float, int]] = []

    def steady_rate(self) -> float:
        """Points/s over the second half of the run (after subscriptions and ramp-up)."""
        if len(self.arrivals) < 2:
            return 0.0
        mid = self.first + (self.last - self.first) / 2
        late = [(t, n) for t, n in self.arrivals if t >= mid]
        span = self.last - mid
        return sum(n for _, n in late) / span if span > 0 else 0.0

    def sink(self) -> Any:
        from bytewax.outputs import DynamicSink, StatelessSinkPartition

        counter = self

        class _Part(StatelessSinkPartition[Any]):
            def write_batch(self, items: list[Any]) -> None:
                n = sum(len(b) for b in items)
                now = time.perf_counter()
                with counter.lock:
                    if not counter.points:
                        counter.first = now
                    counter.points += n
                    counter.last = now
                    counter.arrivals.append((now, n))

        class _Sink(DynamicSink[Any]):
            def build(self, step_id: str, worker_index: int, worker_count: int) -> _Part:
                return _Part()

        return _Sink()


def _run_flow(input_cfg: dict[str, Any], *, seconds: float | None = None) -> _Counter:
    """Run ``input -> count`` until the input ends or ``seconds`` have passed."""
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.testing import run_main

    from flows import lifecycle
    from flows.build import Build
    from flows.config import parse_site
    from flows.registry import component, load_components

    load_components()
    site = parse_site(
        {
            "name": "ingest",
            "site": {"enterprise": "acme", "site": "bench"},
            "inputs": [input_cfg],
            "sinks": [{"type": "console", "streams": ["events"]}],
        }
    )
    b = Build(Dataflow("ingest"), site)
    inp = site.inputs[0]
    component("input", inp.type).build(inp, b)
    counter = _Counter()
    op.output("count", b.stream("raw", "in"), counter.sink())
    timer = None
    if seconds is not None:
        timer = threading.Timer(seconds, lifecycle.request_stop)
        timer.start()
    try:
        run_main(b.flow)  # type: ignore[no-untyped-call]
    finally:
        if timer is not None:
            timer.cancel()
        lifecycle.reset()
    return counter


# -- OPC UA ------------------------------------------------------------------------------
def _node_server(script: str, *args: str) -> Any:
    from tests.interop.servers import NodeServer

    return NodeServer(script, *args).start()


def _asyncua_reference(url: str, seconds: float) -> float:
    """Notifications/s of a bare asyncua subscription to every Bulk variable."""
    import asyncio

    from asyncua import Client, ua

    async def main() -> float:
        count = 0

        class H:
            def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
                nonlocal count
                count += 1

        async with Client(url, timeout=30) as c:
            bulk = c.get_node("ns=1;s=Bulk")
            refs = await bulk.get_references(
                refs=ua.ObjectIds.HierarchicalReferences, direction=ua.BrowseDirection.Forward
            )
            nodes = [c.get_node(r.NodeId) for r in refs if r.NodeClass == ua.NodeClass.Variable]
            sub = await c.create_subscription(100, H())
            for i in range(0, len(nodes), 1000):
                await sub.subscribe_data_change(
                    nodes[i : i + 1000], queuesize=10, sampling_interval=50
                )
            await asyncio.sleep(seconds / 2)  # ramp-up, as for the flow: not measured
            count = 0
            t0 = time.perf_counter()
            await asyncio.sleep(seconds / 2)
            return count / (time.perf_counter() - t0)

    return asyncio.run(main())


def opcua(hz: float, seconds: float) -> dict[str, Any]:
    n = 10_000
    srv = _node_server("opcua_server.js", "--count", str(n), "--update-ms", str(int(1000 / hz)))
    try:
        counter = _run_flow(
            {
                "type": "opcua",
                "url": srv.ready,
                "interval_ms": 100,
                "sampling_interval_ms": 50,
                "timeout_s": 30,
                "browse": [{"root": "ns=1;s=Bulk", "area": "a", "line": "l", "paths": ["{tag}"]}],
            },
            seconds=seconds,
        )
        reference = _asyncua_reference(srv.ready, min(seconds, 20))
    finally:
        srv.stop()
    # Subscribing 10,000 items takes a while: the rate is the steady state of the second half.
    return {
        "case": f"ingest_opcua_{hz:g}hz",
        "offered_per_s": n * hz,
        "values": counter.points,
        "per_s": counter.steady_rate(),
        "reference_per_s": reference,
        "reference": "asyncua subscription, counting only",
    }


# -- MQTT and Sparkplug --------------------------------------------------------------------
def _backlog(topic_of: Any, payloads: list[bytes], client_id: str, sub: str) -> None:
    """Queue messages for a persistent QoS 1 session that is offline."""
    import paho.mqtt.client as mqtt

    subscribed = threading.Event()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
    c.on_subscribe = lambda *a: subscribed.set()
    c.connect("127.0.0.1", MQTT_PORT)
    c.loop_start()
    c.subscribe(sub, qos=1)
    subscribed.wait(10)
    c.disconnect()
    c.loop_stop()
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{client_id}-pub")
    pub.max_inflight_messages_set(1000)
    pub.connect("127.0.0.1", MQTT_PORT)
    pub.loop_start()
    pending = []
    for i, p in enumerate(payloads):
        pending.append(pub.publish(topic_of(i), p, qos=1))
        if len(pending) >= 5000:  # bound paho's own outgoing queue
            pending[-1].wait_for_publish(300)
            pending.clear()
    for info in pending:
        info.wait_for_publish(300)
    pub.disconnect()
    pub.loop_stop()


def _paho_reference(client_id: str, sub: str, n: int, decode: Any = None) -> float:
    """Messages/s of a bare paho client draining a backlog (acknowledging, optionally decoding)."""
    import paho.mqtt.client as mqtt

    done = threading.Event()
    count = 0
    t0 = [0.0]

    def on_message(c: Any, u: Any, msg: Any) -> None:
        nonlocal count
        if not count:
            t0[0] = time.perf_counter()
        if decode is not None:
            decode(msg.payload)
        count += 1
        if count >= n:
            done.set()

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
    c.on_message = on_message
    c.connect("127.0.0.1", MQTT_PORT)
    c.loop_start()
    done.wait(600)
    dt = time.perf_counter() - t0[0]
    c.loop_stop()
    c.disconnect()
    return count / dt if dt > 0 else 0.0


def mqtt_json(n: int) -> dict[str, Any]:
    run = uuid.uuid4().hex[:6]
    payloads = [
        json.dumps({"value": i * 0.5, "ts_ms": 1_767_225_600_000 + i}).encode() for i in range(n)
    ]
    topic = lambda i: f"b{run}/a/l/m{i % 100}/t{i % 7}"  # noqa: E731
    _backlog(topic, payloads, f"edge-{run}", f"b{run}/#")
    _backlog(topic, payloads, f"ref-{run}", f"b{run}/#")
    counter = _run_flow(
        {
            "type": "mqtt",
            "host": "127.0.0.1",
            "port": MQTT_PORT,
            "client_id": f"edge-{run}",
            "topics": [{"template": f"b{run}/{{area}}/{{line}}/{{machine}}/{{tag}}"}],
            "max_messages": n,
        }
    )
    reference = _paho_reference(f"ref-{run}", f"b{run}/#", n)
    span = counter.last - counter.first
    return {
        "case": "ingest_mqtt_json",
        "offered_per_s": None,
        "values": counter.points,
        "per_s": counter.points / span if span > 0 else 0.0,
        "reference_per_s": reference,
        "reference": "paho client draining the same backlog, counting only",
    }


def sparkplug(messages: int, metrics: int) -> dict[str, Any]:
    from wire.sparkplug.codec import encode
    from wire.sparkplug.sparkplug_b_pb2 import Payload

    run = uuid.uuid4().hex[:6]
    group = f"bench{run}"
    birth = encode(
        [(f"m{k}", k, "Double", 0.0) for k in range(metrics)], seq=0, timestamp=1_767_225_600_000
    )
    data = [
        encode(
            [(None, k, "Double", float(i + k)) for k in range(metrics)],
            seq=(i + 1) % 256,
            timestamp=1_767_225_600_000 + i * 1000,
        )
        for i in range(messages)
    ]
    payloads = [birth, *data]
    topic = lambda i: f"spBv1.0/{group}/{'NBIRTH' if i == 0 else 'NDATA'}/edge1"  # noqa: E731
    _backlog(topic, payloads, f"edge-{run}", f"spBv1.0/{group}/#")
    _backlog(topic, payloads, f"ref-{run}", f"spBv1.0/{group}/#")
    counter = _run_flow(
        {
            "type": "mqtt",
            "host": "127.0.0.1",
            "port": MQTT_PORT,
            "client_id": f"edge-{run}",
            "sparkplug_groups": [group],
            "max_messages": len(payloads),
        }
    )

    def decode(b: bytes) -> None:
        Payload().ParseFromString(b)

    reference = _paho_reference(f"ref-{run}", f"spBv1.0/{group}/#", len(payloads), decode)
    span = counter.last - counter.first
    return {
        "case": "ingest_sparkplug",
        "offered_per_s": None,
        "values": counter.points,
        "per_s": counter.points / span if span > 0 else 0.0,
        "reference_per_s": reference * metrics,
        "reference": "paho + protobuf decode of the same backlog (metrics/s)",
    }


# -- Modbus ---------------------------------------------------------------------------------
def modbus(units: int, registers: int, seconds: float) -> dict[str, Any]:
    from connectors.modbus.config import ModbusInput
    from connectors.modbus.source import ModbusSource

    srv = _node_server("modbus_server.js")
    try:
        cfg = ModbusInput(
            type="modbus",
            host="127.0.0.1",
            port=srv.port,
            devices=[
                {
                    "device_id": u,
                    "area": "a",
                    "line": "l",
                    "machine": f"unit-{u:03d}",
                    "interval_ms": 1000,
                    "registers": [{"tag": f"r{a}", "address": a} for a in range(registers)],
                }
                for u in range(1, units + 1)
            ],
        )
        # Drive the partitions as a worker does, so the lateness of every poll is known.
        src = ModbusSource(cfg, "acme", "bench")
        parts = [src.build_part("s", p, None) for p in src.list_parts()]
        points = 0
        t_end = time.monotonic() + seconds
        while time.monotonic() < t_end:
            for part in parts:
                points += sum(len(b) for b in part.next_batch() if hasattr(b, "tag_idx"))
            time.sleep(0.005)
        for part in parts:
            part.close()
        lateness = np.concatenate([np.asarray(p.lateness_ms) for p in parts])
        polls = sum(p.stats.polls for p in parts)
        missed = sum(p.stats.missed for p in parts)
        # Reference: one pymodbus client, the same 100-register reads back to back.
        from pymodbus.client import ModbusTcpClient

        c = ModbusTcpClient("127.0.0.1", port=srv.port, timeout=2, retries=0)
        c.connect()
        n_ref, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < 5:
            c.read_holding_registers(0, count=registers, device_id=1 + n_ref % units)
            n_ref += 1
        ref = n_ref / (time.perf_counter() - t0)
        c.close()
    finally:
        srv.stop()
    return {
        "case": "ingest_modbus",
        "offered_per_s": units * registers,
        "values": points,
        "per_s": points / seconds,
        "polls": polls,
        "expected_polls": int(units * seconds),
        "missed_polls": missed,
        "lateness_p50_ms": float(np.percentile(lateness, 50)),
        "lateness_p99_ms": float(np.percentile(lateness, 99)),
        "reference_per_s": ref * registers,
        "reference": f"one pymodbus client, {registers}-register reads back to back (values/s)",
    }


CASES = {
    "opcua_1hz": lambda q: opcua(1.0, 20 if q else 40),
    "opcua_10hz": lambda q: opcua(10.0, 15 if q else 30),
    "mqtt": lambda q: mqtt_json(50_000 if q else 200_000),
    "sparkplug": lambda q: sparkplug(150 if q else 2000, 1000),
    "modbus": lambda q: modbus(100, 100, 20 if q else 60),
}


def main() -> None:
    """Run one ingest case; print its JSON line."""
    p = argparse.ArgumentParser()
    p.add_argument("case", choices=sorted(CASES))
    p.add_argument("--quick", action="store_true")
    a = p.parse_args()
    res = CASES[a.case](a.quick)
    res["peak_rss_mb"] = _rss_mb()
    json.dump(res, sys.stdout)
    print()


if __name__ == "__main__":
    main()
