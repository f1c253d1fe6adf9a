"""MQTT source (paho-mqtt 2.x): topic templates, JSON or bare-number payloads, Sparkplug B.

Plain topics: a template such as ``plant/{area}/{line}/{machine}/{tag}`` is subscribed as
``plant/+/+/+/+`` and each topic level fills an ISA-95 field (``enterprise`` and ``site``
default to the site config). Payloads are JSON (``{"value": .., "quality": "GOOD",
"timestamp": "2026-...Z" | "ts_ms": ..}`` or a bare JSON number) or a bare ASCII number.

Sparkplug B (``spBv1.0/{group}/{type}/{edge_node}[/{device}]``): NBIRTH/DBIRTH define alias
tables; NDATA/DDATA resolve aliases; NDEATH/DDEATH mark the node's or device's metrics stale
(``stale`` events). Per-edge-node ``seq`` is tracked; a gap or an unknown alias requests a
rebirth (an NCMD ``Node Control/Rebirth``), at most once per ``rebirth_min_interval_ms``.
Metric paths: ``{enterprise}/{site}/{group}/{edge_node}/{device or "node"}/{metric}`` with
``/`` in metric names replaced by ``.``.

Callbacks put messages on a bounded queue; ``overflow`` names what happens when it is full:
``block`` (default: the network thread waits; QoS 1 messages are acknowledged only once taken
into a batch, so the broker redelivers what a crash loses), ``drop_oldest`` or
``drop_newest`` (each drop becomes a dead letter). Malformed payloads, unknown topics and
unknown aliases become dead letters with the raw bytes.
"""

from __future__ import annotations

import json
import logging
import math
import queue
import ssl
import threading
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from typing_extensions import override

from connectors.errors import SourceError
from connectors.mqtt.config import FIELDS, MqttInput
from flows.lifecycle import stop_requested
from flows.logs import reveal
from wire.errors import RecordError
from wire.records import DeadLetter, Event, PointBatch, Quality, TagTable, now_ms, to_ms
from wire.sparkplug.codec import SparkplugError, decode, encode

__all__ = ["MqttSource", "SparkplugState", "parse_plain"]

log = logging.getLogger(__name__)
SourceItem = PointBatch | DeadLetter | Event
Point = tuple[str, str, int, float, int]  # path, unit, ts_ms, value, quality


def parse_plain(payload: bytes, kind: str, received_ms: int) -> tuple[float, int, int]:
    """Decode a plain payload to ``(value, quality, ts_ms)``; raises ValueError."""
    text = payload.decode("utf-8").strip()
    if kind == "number":
        value = float(text)
        quality, ts = int(Quality.GOOD), received_ms
    else:
        doc = json.loads(text)
        if isinstance(doc, int | float) and not isinstance(doc, bool):
            value, quality, ts = float(doc), int(Quality.GOOD), received_ms
        elif isinstance(doc, dict) and "value" in doc:
            raw = doc["value"]
            if isinstance(raw, bool):
                raw = float(raw)
            if not isinstance(raw, int | float):
                msg = f"value {raw!r} is not a number"
                raise ValueError(msg)
            value = float(raw)
            quality = int(Quality.parse(doc.get("quality", "GOOD")))
            if "ts_ms" in doc:
                ts = int(doc["ts_ms"])
            elif "timestamp" in doc:
                ts = to_ms(doc["timestamp"])
            else:
                ts = received_ms
        else:
            msg = "JSON payload must be a number or an object with a 'value'"
            raise ValueError(msg)
    if not math.isfinite(value):
        msg = f"value {value} is not finite"
        raise ValueError(msg)
    return value, quality, ts


@dataclass
class _Node:
    aliases: dict[int, tuple[str, str | None]] = field(
        default_factory=dict
    )  # alias -> (name, device)
    metrics: dict[str | None, set[str]] = field(default_factory=dict)  # device -> names
    seq: int | None = None
    last_rebirth_ms: int = -(10**12)
    online: bool = False


class SparkplugState:
    """Sparkplug B host-application state machine (pure: no I/O)."""

    def __init__(self, *, enterprise: str, site: str, rebirth_min_interval_ms: int = 10_000):
        self.enterprise = enterprise
        self.site = site
        self.rebirth_min_interval_ms = rebirth_min_interval_ms
        self.nodes: dict[tuple[str, str], _Node] = {}
        self.rebirths_requested = 0

    def path(self, group: str, node: str, device: str | None, metric: str) -> str:
        """ISA-95 path of a metric."""
        return "/".join(
            (self.enterprise, self.site, group, node, device or "node", metric.replace("/", "."))
        )

    def _rebirth(
        self, group: str, node_id: str, node: _Node, now: int, why: str, out: list[str]
    ) -> None:
        if now - node.last_rebirth_ms >= self.rebirth_min_interval_ms:
            node.last_rebirth_ms = now
            self.rebirths_requested += 1
            log.info("sparkplug: rebirth request to %s/%s (%s)", group, node_id, why)
            out.append(f"spBv1.0/{group}/NCMD/{node_id}")

    def handle(
        self, topic: str, payload: bytes, now: int
    ) -> tuple[list[Point], list[DeadLetter], list[Event], list[str]]:
        """Process one message: ``(points, dead letters, events, rebirth topics)``."""
        points: list[Point] = []
        dead: list[DeadLetter] = []
        events: list[Event] = []
        rebirth: list[str] = []
        parts = topic.split("/")
        if len(parts) not in (4, 5) or parts[0] != "spBv1.0":
            dead.append(DeadLetter("mqtt", f"not a Sparkplug B topic: {topic}", payload))
            return points, dead, events, rebirth
        group, mtype, node_id = parts[1], parts[2], parts[3]
        device = parts[4] if len(parts) == 5 else None
        if mtype in ("NCMD", "DCMD", "STATE"):
            return points, dead, events, rebirth
        node = self.nodes.setdefault((group, node_id), _Node())
        if mtype == "NDEATH":
            node.online = False
            for dev, names in node.metrics.items():
                events.extend(self._stale(group, node_id, dev, names, now, "NDEATH"))
            return points, dead, events, rebirth
        try:
            p = decode(payload)
        except SparkplugError as e:
            dead.append(DeadLetter("mqtt", f"{topic}: {e}", payload))
            return points, dead, events, rebirth
        if mtype == "DDEATH":
            events.extend(
                self._stale(group, node_id, device, node.metrics.get(device, set()), now, "DDEATH")
            )
            return points, dead, events, rebirth
        # Sequence: NBIRTH restarts it; every other message must be previous + 1 (mod 256).
        if mtype == "NBIRTH":
            node.aliases = {a: v for a, v in node.aliases.items() if v[1] is not None}
            node.online = True
        elif p.seq is not None and node.seq is not None and p.seq != (node.seq + 1) % 256:
            why = f"seq gap: expected {(node.seq + 1) % 256}, got {p.seq}"
            self._rebirth(group, node_id, node, now, why, rebirth)
        elif node.seq is None and mtype != "NBIRTH":
            self._rebirth(group, node_id, node, now, "data before birth", rebirth)
        if p.seq is not None:
            node.seq = p.seq
        ts_default = p.timestamp or now
        for m in p.metrics:
            name = m.name
            if mtype in ("NBIRTH", "DBIRTH"):
                if name is None:
                    dead.append(
                        DeadLetter("mqtt", f"{topic}: birth metric without a name", payload)
                    )
                    continue
                if m.alias is not None:
                    node.aliases[m.alias] = (name, device)
                node.metrics.setdefault(device, set()).add(name)
            elif name is None:
                known = node.aliases.get(m.alias) if m.alias is not None else None
                if known is None:
                    dead.append(
                        DeadLetter(
                            "mqtt", f"{topic}: unknown alias {m.alias} (rebirth requested)", payload
                        )
                    )
                    self._rebirth(group, node_id, node, now, f"unknown alias {m.alias}", rebirth)
                    continue
                name = known[0]
            if m.is_null or m.value is None:
                continue
            if isinstance(m.value, str | bytes):
                continue  # text metrics are not part of numeric batches
            points.append(
                (
                    self.path(group, node_id, device, name),
                    "",
                    int(m.timestamp or ts_default),
                    float(m.value),
                    int(Quality.GOOD),
                )
            )
        return points, dead, events, rebirth

    def _stale(
        self, group: str, node_id: str, device: str | None, names: set[str], now: int, why: str
    ) -> list[Event]:
        return [
            Event(
                kind="stale",
                rule=f"sparkplug.{why.lower()}",
                path=self.path(group, node_id, device, n),
                ts_ms=now,
                severity="warning",
                state="raised",
                message=f"{why}: metric is stale until the next birth",
            )
            for n in sorted(names)
        ]


def rebirth_payload() -> bytes:
    """NCMD payload asking an edge node to publish its births again."""
    return encode([("Node Control/Rebirth", None, "Boolean", True)], seq=None, timestamp=now_ms())


class _Partition(StatefulSourcePartition[SourceItem, None]):
    def __init__(self, src: MqttSource) -> None:
        self.src = src
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=src.cfg.queue_size)
        self.dropped = 0
        self.lock = threading.Lock()
        self.sparkplug = SparkplugState(
            enterprise=src.enterprise,
            site=src.site,
            rebirth_min_interval_ms=src.cfg.rebirth_min_interval_ms,
        )
        self.table = TagTable()
        self.connected = threading.Event()
        c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,  # type: ignore[attr-defined]
            client_id=src.cfg.client_id,
            clean_session=False,
            manual_ack=True,
        )
        if src.cfg.username:
            c.username_pw_set(
                src.cfg.username,
                reveal(src.cfg.password) if src.cfg.password else None,
            )
        if src.cfg.tls_ca:
            c.tls_set(ca_certs=src.cfg.tls_ca, cert_reqs=ssl.CERT_REQUIRED)
        c.on_connect = self._on_connect
        c.on_message = self._on_message
        c.reconnect_delay_set(1, 30)
        self.client = c
        try:
            c.connect(src.cfg.host, src.cfg.port, keepalive=30)
        except OSError as e:
            msg = f"MQTT broker at {src.cfg.host}:{src.cfg.port} is unreachable: {e}"
            raise SourceError(msg) from e
        c.loop_start()
        if not self.connected.wait(src.cfg.connect_timeout_s):
            c.loop_stop()
            msg = f"MQTT broker at {src.cfg.host}:{src.cfg.port} did not accept the connection"
            raise SourceError(msg)

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if rc.is_failure:
            log.error("mqtt: connection refused: %s", rc)
            return
        subs = [(t.subscription, self.src.cfg.qos) for t in self.src.cfg.topics]
        if self.src.cfg.sparkplug_groups:
            subs += [(f"spBv1.0/{g}/#", self.src.cfg.qos) for g in self.src.cfg.sparkplug_groups]
        client.subscribe(subs)
        self.connected.set()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        item = (msg.topic, bytes(msg.payload), now_ms(), msg.mid, msg.qos)
        policy = self.src.cfg.overflow
        if policy == "block":
            self.queue.put(item)
            return
        try:
            self.queue.put_nowait(item)
        except queue.Full:
            with self.lock:
                self.dropped += 1
            if policy == "drop_oldest":
                old = self.queue.get_nowait()
                self.client.ack(old[3], old[4])
                self.queue.put_nowait(item)
            else:
                self.client.ack(msg.mid, msg.qos)

    @override
    def next_batch(self) -> list[SourceItem]:
        if stop_requested() or (
            self.src.cfg.max_messages is not None and self.src._taken >= self.src.cfg.max_messages
        ):
            raise StopIteration
        out: list[SourceItem] = []
        pts: list[Point] = []
        received = 0
        for _ in range(self.src.cfg.batch_size):
            try:
                topic, payload, recv, mid, qos = self.queue.get_nowait()
            except queue.Empty:
                break
            self.src._taken += 1
            received = max(received, recv)
            if topic.startswith("spBv1.0/"):
                p, d, e, rebirth = self.sparkplug.handle(topic, payload, recv)
                pts += p
                out += d
                out += e
                for t in rebirth:
                    self.client.publish(t, rebirth_payload(), qos=0)
            else:
                for tpl in self.src.cfg.topics:
                    fields = tpl.match(topic)
                    if fields is not None:
                        break
                else:
                    out.append(DeadLetter("mqtt", f"unknown topic {topic}", payload))
                    self.client.ack(mid, qos)
                    continue
                try:
                    value, quality, ts = parse_plain(payload, tpl.payload, recv)
                    ctx = {"enterprise": self.src.enterprise, "site": self.src.site, **fields}
                    path = "/".join(ctx.get(f, "") for f in FIELDS)
                    if any(not ctx.get(f) for f in FIELDS):
                        msg = f"topic {topic} leaves an ISA-95 level empty"
                        raise ValueError(msg)
                    pts.append((path, tpl.unit, ts, value, quality))
                except (ValueError, UnicodeDecodeError, RecordError) as e:
                    out.append(DeadLetter("mqtt", f"{topic}: {e}", payload))
            self.client.ack(mid, qos)
        with self.lock:
            dropped, self.dropped = self.dropped, 0
        if dropped:
            out.append(
                DeadLetter(
                    "mqtt",
                    f"overflow: {dropped} messages dropped "
                    f"({self.src.cfg.overflow}, queue of {self.src.cfg.queue_size})",
                    b"",
                )
            )
        if pts:
            out.insert(0, self.table.batch(pts, source=self.src.cfg.id, received_ms=received))
        return out

    @override
    def next_awake(self) -> Any:
        return None if not self.queue.empty() else _soon()

    @override
    def snapshot(self) -> None:
        return None

    @override
    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _soon() -> Any:
    from datetime import UTC, datetime, timedelta

    return datetime.now(UTC) + timedelta(milliseconds=20)


@dataclass
class MqttSource(FixedPartitionedSource[SourceItem, None]):
    """Subscribe to plain templates and/or Sparkplug groups; see the module docs."""

    cfg: MqttInput
    enterprise: str
    site: str
    _taken: int = field(default=0, init=False, repr=False)

    @override
    def list_parts(self) -> list[str]:
        return [f"{self.cfg.id}:{self.cfg.host}:{self.cfg.port}"]

    @override
    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _Partition:
        return _Partition(self)
