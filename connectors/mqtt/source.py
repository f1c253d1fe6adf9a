"""MQTT input (paho-mqtt 2.x): topic templates, JSON or bare-number payloads, Sparkplug B.

Messages are decoded in paho's network thread, never on the Bytewax worker, and handed over
through a bounded :class:`Channel`; ``next_batch`` only drains it. Every message becomes
points, text points, events or dead letters with the reason: no payload can raise out of the
decoder (see :mod:`connectors.mqtt.payloads` and :mod:`connectors.mqtt.sparkplug`).

Plain topics: a template such as ``plant/{area}/{line}/{machine}/{tag}`` is subscribed as
``plant/+/+/+/+`` and each topic level fills an ISA-95 field (``enterprise`` and ``site``
default to the site's). A string value is a text point when the tag matches ``text_tags``;
otherwise a numeric string is coerced and any other string is a dead letter.

The connection is started asynchronously: a broker that is down at start is a warning and a
``source_down`` event, and paho reconnects (first attempt at once, then at most every
``reconnect_max_s``). With ``sparkplug_host_id`` the input is a Sparkplug primary host: it
publishes ``spBv1.0/STATE/{host_id}`` (retained, QoS 1) online on connect and offline as its
Last Will.

``overflow`` names what happens when ``queue_size`` messages wait: ``block`` (default: paho
stops reading, the broker keeps QoS 1 messages), ``drop_oldest`` or ``drop_newest`` (drops are
one dead letter per episode, with their count). QoS 1 messages are acknowledged when the
flow takes them.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from typing_extensions import override

from connectors._io import Channel, Episodes, Link, SourceItem
from connectors.errors import SourceError
from connectors.mqtt.config import FIELDS, MqttInput
from connectors.mqtt.payloads import PayloadError, parse_plain
from connectors.mqtt.sparkplug import Sample, SparkplugState, rebirth_payload
from flows.lifecycle import stop_requested
from flows.logs import reveal
from wire.records import (
    DeadLetter,
    Isa95,
    Point,
    Quality,
    TagRef,
    TagTable,
    TextPoints,
    now_ms,
    tag_matches,
)

__all__ = ["MqttSource", "SparkplugState", "parse_plain"]

log = logging.getLogger(__name__)


@dataclass
class _Decoded:
    """One message, decoded in the network thread, waiting for the flow."""

    mid: int
    qos: int
    received_ms: int
    samples: list[Sample] = field(default_factory=list)
    others: list[SourceItem] = field(default_factory=list)


class _Partition(StatefulSourcePartition[SourceItem, None]):
    def __init__(self, src: MqttSource) -> None:
        cfg = src.cfg
        self.src, self.cfg = src, cfg
        self.channel: Channel[_Decoded] = Channel(
            cfg.queue_size, cfg.overflow, on_drop=self._ack_dropped
        )
        self.episodes = Episodes("mqtt", f"{cfg.id}:{cfg.host}:{cfg.port}")
        self.link = Link(
            cfg.id,
            f"mqtt://{cfg.host}:{cfg.port}",
            f"{src.enterprise}/{src.site}/{cfg.id}",
            self._event,
        )
        self._events: list[SourceItem] = []
        self._lock = threading.Lock()
        self.sparkplug = SparkplugState(
            enterprise=src.enterprise,
            site=src.site,
            rebirth_min_interval_ms=cfg.rebirth_min_interval_ms,
        )
        self.table = TagTable()
        self.taken = 0
        self._closing = False
        self._sub_mid = -1
        self._routes: dict[str, tuple[str, str, str, bool] | str] = {}
        self.client = self._client()

    # -- network thread ------------------------------------------------------------------
    def _client(self) -> mqtt.Client:
        cfg = self.cfg
        c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,  # type: ignore[attr-defined]
            client_id=cfg.client_id,
            clean_session=False,
            manual_ack=True,
        )
        if cfg.username:
            c.username_pw_set(cfg.username, reveal(cfg.password) if cfg.password else None)
        if cfg.tls_ca:
            try:
                c.tls_set(ca_certs=cfg.tls_ca, cert_reqs=ssl.CERT_REQUIRED)
            except (OSError, ssl.SSLError) as e:
                msg = f"input {cfg.id}: tls_ca {cfg.tls_ca}: {getattr(e, 'strerror', None) or e}"
                raise SourceError(msg) from None
        if cfg.sparkplug_host_id:
            born = now_ms()
            c.will_set(
                f"spBv1.0/STATE/{cfg.sparkplug_host_id}",
                json.dumps({"online": False, "timestamp": born}),
                qos=1,
                retain=True,
            )
            self._born_ms = born
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_subscribe = self._on_subscribe
        c.on_message = self._on_message
        c.reconnect_delay_set(1, max(1, int(cfg.reconnect_max_s)))
        c.connect_async(cfg.host, cfg.port, keepalive=30)
        c.loop_start()
        return c

    def _event(self, item: SourceItem) -> None:
        with self._lock:
            self._events.append(item)

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if rc.is_failure:
            self.link.down(f"connection refused: {rc}")
            return
        cfg = self.cfg
        subs = [(t.subscription, cfg.qos) for t in cfg.topics]
        subs += [(f"spBv1.0/{g}/#", cfg.qos) for g in cfg.sparkplug_groups]
        self._sub_mid = client.subscribe(subs)[1]
        if cfg.sparkplug_host_id:
            client.publish(
                f"spBv1.0/STATE/{cfg.sparkplug_host_id}",
                json.dumps({"online": True, "timestamp": self._born_ms}),
                qos=1,
                retain=True,
            )

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, codes: Any, props: Any) -> None:
        # Up once the broker confirmed the subscriptions: from then on nothing is missed.
        if mid == self._sub_mid:
            failed = [str(c) for c in codes if c.is_failure]
            if failed:
                self.link.down(f"subscription refused: {', '.join(failed)}")
            else:
                self.link.up()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if not (stop_requested() or self._closing):
            self.link.down(f"disconnected: {rc}")

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        recv = now_ms()
        decoded = _Decoded(msg.mid, msg.qos, recv)
        try:
            self._decode(msg.topic, bytes(msg.payload), recv, decoded)
        except Exception as e:  # nothing a message holds may stop the input
            log.exception("%s: unexpected failure decoding %s", self.cfg.id, msg.topic)
            decoded.samples = []
            decoded.others = [
                DeadLetter("mqtt", f"{msg.topic}: undecodable ({e})", bytes(msg.payload))
            ]
        self.channel.put(decoded)

    def _ack_dropped(self, d: _Decoded) -> None:
        self.client.ack(d.mid, d.qos)

    def _decode(self, topic: str, payload: bytes, recv: int, out: _Decoded) -> None:
        if topic.startswith("spBv1.0/"):
            samples, dead, events, rebirth = self.sparkplug.handle(topic, payload, recv)
            out.samples = samples
            out.others = [*dead, *events]
            for t in rebirth:
                self.client.publish(t, rebirth_payload(now_ms()), qos=0)
            return
        route = self._routes.get(topic)
        if route is None:
            route = self._route(topic)
            if len(self._routes) < 100_000:  # topics repeat: resolve each once
                self._routes[topic] = route
        if isinstance(route, str):
            out.others.append(DeadLetter("mqtt", route, payload))
            return
        path, unit, kind, text = route
        try:
            value, quality, ts = parse_plain(payload, kind, recv, keep_text=text)
        except PayloadError as e:
            out.others.append(DeadLetter("mqtt", f"{topic}: {e}", payload))
            return
        out.samples.append((path, unit, ts, value, quality, False, False))

    def _route(self, topic: str) -> tuple[str, str, str, bool] | str:
        """Return ``(path, unit, payload kind, text tag)`` of a plain topic, or the reason."""
        for tpl in self.cfg.topics:
            fields = tpl.match(topic)
            if fields is not None:
                break
        else:
            return f"unknown topic {topic}"
        ctx = {"enterprise": self.src.enterprise, "site": self.src.site, **fields}
        empty = [f for f in FIELDS if not ctx.get(f)]
        if empty:
            return f"topic {topic} leaves ISA-95 level(s) {', '.join(empty)} empty"
        path = "/".join(ctx[f] for f in FIELDS)
        try:
            Isa95(*path.split("/")[:5])  # levels with surrounding spaces are refused here
        except ValueError as e:
            return f"{topic}: {e}"
        text = self.cfg.text_tags is not None and tag_matches(
            self.cfg.text_tags, TagRef(path, tpl.unit)
        )
        return path, tpl.unit, tpl.payload, text

    # -- worker --------------------------------------------------------------------------
    def _assemble(self, taken: list[_Decoded]) -> list[SourceItem]:
        out: list[SourceItem] = []
        numeric: list[Sample] = []
        texts: list[Point] = []
        received = 0
        for d in taken:
            received = max(received, d.received_ms)
            for s in d.samples:
                if isinstance(s[3], str):
                    ref = TagRef(s[0], s[1])
                    ctx = ref.context
                    texts.append(Point(s[2], ctx, ref.tag, s[3], s[1], Quality(s[4]), self.cfg.id))
                else:
                    numeric.append(s)
            out += d.others
        if numeric:
            flags = {"historical": [s[5] for s in numeric], "transient": [s[6] for s in numeric]}
            out.insert(
                0, self.table.batch(numeric, source=self.cfg.id, received_ms=received, flags=flags)
            )
        if texts:
            out.append(TextPoints(tuple(texts)))
        return out

    @override
    def next_batch(self) -> list[SourceItem]:
        limit = self.cfg.max_messages
        if stop_requested() or (limit is not None and self.taken >= limit):
            raise StopIteration
        want = (
            self.cfg.batch_size if limit is None else min(self.cfg.batch_size, limit - self.taken)
        )
        taken = self.channel.drain(want)
        self.taken += len(taken)
        out = self._assemble(taken) if taken else []
        # QoS 1: acknowledged once taken into the flow.
        for d in taken:
            self.client.ack(d.mid, d.qos)
        dropped = self.channel.take_dropped()
        if dropped:
            reason = (
                f"overflow: messages dropped ({self.cfg.overflow}, queue of {self.cfg.queue_size})"
            )
            first = self.episodes.seen("overflow", reason, {"dropped": dropped})
            out += [first] if first else []
            for _ in range(dropped - 1):
                self.episodes.seen("overflow", reason, {})
        elif taken and "overflow" in self.episodes:
            out += [d for d in [self.episodes.clear("overflow")] if d]
        with self._lock:
            events, self._events = self._events, []
        return events + out

    @override
    def next_awake(self) -> Any:
        from datetime import UTC, datetime, timedelta

        if len(self.channel) or self._events:
            return None
        return datetime.now(UTC) + timedelta(milliseconds=20)

    @override
    def snapshot(self) -> None:
        return None

    @override
    def close(self) -> None:
        self._closing = True
        cfg = self.cfg
        if cfg.sparkplug_host_id and self.link.is_up:
            self.client.publish(
                f"spBv1.0/STATE/{cfg.sparkplug_host_id}",
                json.dumps({"online": False, "timestamp": self._born_ms}),
                qos=1,
                retain=True,
            ).wait_for_publish(2)
        self.client.disconnect()
        self.client.loop_stop()


@dataclass
class MqttSource(FixedPartitionedSource[SourceItem, None]):
    """Subscribe to plain templates and/or Sparkplug groups; see the module docs."""

    cfg: MqttInput
    enterprise: str
    site: str

    @override
    def list_parts(self) -> list[str]:
        return [f"{self.cfg.id}:{self.cfg.host}:{self.cfg.port}"]

    @override
    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _Partition:
        return _Partition(self)
