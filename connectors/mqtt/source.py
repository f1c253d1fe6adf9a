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
one dead letter per episode, with their count).

Nothing acknowledged is lost. The session is persistent (``clean_session=False``, a fixed
``client_id``), so the broker keeps what was not acknowledged across a crash. A message is
acknowledged only once it is durable: each one is appended to a local input spool
(:mod:`connectors._spool`, ``<spool dir>/<site name>/<input id>/<client id>``), and an ack
thread fsyncs the spool and then acknowledges everything appended before the fsync (group
commit: one fsync covers every message that arrived meanwhile). The spool keeps a message
until it is no longer needed: with recovery, until the epoch that took it into the flow is
committed (a resumed run replays the spool after its snapshot's position); without recovery,
until the flow took it (a restart replays what the flow had not taken). A crash between the
fsync and the acknowledgement makes the broker send a message again: delivery is at least
once, and the database sinks' upserts make the repeat harmless.
"""

from __future__ import annotations

import json
import logging
import os
import ssl
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from typing_extensions import override

from connectors._io import Channel, Episodes, Link, SourceItem
from connectors._spool import Spool
from connectors.errors import SourceError
from connectors.mqtt.config import FIELDS, MqttInput
from connectors.mqtt.payloads import PayloadError, parse_plain
from connectors.mqtt.sparkplug import Sample, SparkplugState, rebirth_payload
from flows.lifecycle import stop_requested
from flows.logs import reveal
from flows.recovery import committed_frontier, recovery_dir, start_epoch
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

_MSG = struct.Struct("<qH")  # received ms, topic length; then topic, payload


def _pack(topic: str, payload: bytes, received_ms: int) -> bytes:
    t = topic.encode()
    return _MSG.pack(received_ms, len(t)) + t + payload


def _unpack(data: bytes) -> tuple[str, bytes, int]:
    received_ms, n = _MSG.unpack_from(data, 0)
    start = _MSG.size
    return data[start : start + n].decode(), data[start + n :], received_ms


@dataclass
class _Decoded:
    """One message, decoded in the network thread, waiting for the flow."""

    seq: int
    received_ms: int
    samples: list[Sample] = field(default_factory=list)
    others: list[SourceItem] = field(default_factory=list)


class _Partition(StatefulSourcePartition[SourceItem, dict[str, int]]):
    def __init__(self, src: MqttSource, resume: dict[str, int] | None) -> None:
        cfg = src.cfg
        self.src, self.cfg = src, cfg
        self.channel: Channel[_Decoded] = Channel(cfg.queue_size, cfg.overflow)
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
        # -- durability (see the module docstring) --
        self.spool = Spool(src.spool_path())
        self.recovery = recovery_dir()
        start = resume["seq"] if isinstance(resume, dict) else self.spool.acked
        self.taken_seq = start
        self.epoch = start_epoch()
        self.marks: list[tuple[int, int]] = []  # (epoch, last seq taken in it)
        self._checked = 0.0
        self._unacked: list[tuple[int, int]] = []
        self._ack_cond = threading.Condition()
        self._ack_stop = False
        self.client = self._client()
        # Before connecting: the replay decodes in this thread, then the network thread does.
        self.replay = self._replay(start)
        self.client.connect_async(cfg.host, cfg.port, keepalive=30)
        self.client.loop_start()
        self._acker = threading.Thread(target=self._ack_loop, name=f"{cfg.id}-ack", daemon=True)
        self._acker.start()

    def _replay(self, after: int) -> list[_Decoded]:
        """Decode what the spool holds after ``after`` (before the client starts)."""
        out: list[_Decoded] = []
        while True:
            records = self.spool.read(after, 10_000)
            if not records:
                break
            for r in records:
                topic, payload, recv = _unpack(r.data)
                out.append(self._decoded(r.seq, topic, payload, recv))
            after = records[-1].seq
        if out:
            log.info(
                "%s: %d messages acknowledged before the last stop are taken from %s",
                self.cfg.id,
                len(out),
                self.spool.dir,
            )
        return out

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
        payload = bytes(msg.payload)
        seq = self.spool.append(_pack(msg.topic, payload, recv), 0)
        with self._ack_cond:
            self._unacked.append((msg.mid, msg.qos))
            self._ack_cond.notify()
        self.channel.put(self._decoded(seq or -1, msg.topic, payload, recv))

    def _decoded(self, seq: int, topic: str, payload: bytes, recv: int) -> _Decoded:
        decoded = _Decoded(seq, recv)
        try:
            self._decode(topic, payload, recv, decoded)
        except Exception as e:  # nothing a message holds may stop the input
            log.exception("%s: unexpected failure decoding %s", self.cfg.id, topic)
            decoded.samples = []
            decoded.others = [DeadLetter("mqtt", f"{topic}: undecodable ({e})", payload)]
        return decoded

    def _ack_loop(self) -> None:
        """Fsync the spool, then acknowledge every message appended before (group commit)."""
        while True:
            with self._ack_cond:
                while not self._unacked and not self._ack_stop:
                    self._ack_cond.wait()
                pending, self._unacked = self._unacked, []
                stopping = self._ack_stop
            if pending:
                self.spool.sync()
                for mid, qos in pending:
                    if qos:
                        self.client.ack(mid, qos)
            if stopping:
                return

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
        if self.replay:
            taken, self.replay = self.replay[:want], self.replay[want:]
        else:
            taken = self.channel.drain(want)
        self.taken += len(taken)
        out = self._assemble(taken) if taken else []
        if taken:
            self.taken_seq = max(self.taken_seq, max(d.seq for d in taken))
        self._release()
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

    def _release(self) -> None:
        """Let the spool forget messages that are no longer needed (at most once a second)."""
        if time.monotonic() - self._checked < 1.0:
            return
        self._checked = time.monotonic()
        if self.recovery is None:
            upto = self.taken_seq
        else:
            frontier = committed_frontier(self.recovery)
            upto = -1
            while self.marks and frontier is not None and self.marks[0][0] < frontier:
                upto = self.marks.pop(0)[1]
        if upto > self.spool.acked:
            self.spool.ack(upto)
            self.spool.save_meta()

    @override
    def next_awake(self) -> Any:
        from datetime import UTC, datetime, timedelta

        if self.replay or len(self.channel) or self._events:
            return None
        return datetime.now(UTC) + timedelta(milliseconds=20)

    @override
    def snapshot(self) -> dict[str, int]:
        self.marks.append((self.epoch, self.taken_seq))
        self.epoch += 1
        return {"seq": self.taken_seq}

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
        with self._ack_cond:
            self._ack_stop = True
            self._ack_cond.notify()
        self._acker.join(5.0)
        if self.recovery is None:
            self._checked = 0.0
            self._release()
        self.spool.close()


@dataclass
class MqttSource(FixedPartitionedSource[SourceItem, dict[str, int]]):
    """Subscribe to plain templates and/or Sparkplug groups; see the module docs.

    ``spool_dir``: where the input spool lives (default: ``$EDGEFLOW_SPOOL_DIR`` or
    ``./spool``, then ``<site name>/<input id>``); the client id is appended.
    """

    cfg: MqttInput
    enterprise: str
    site: str
    spool_dir: Path | None = None

    def spool_path(self) -> Path:
        """Return the input spool's directory (one per client id: one persistent session each)."""
        base = self.spool_dir
        if base is None:
            root = self.cfg.spool_dir or Path(os.environ.get("EDGEFLOW_SPOOL_DIR", "spool"))
            base = root / self.site / self.cfg.id
        return base / self.cfg.client_id

    @override
    def list_parts(self) -> list[str]:
        return [f"{self.cfg.id}:{self.cfg.host}:{self.cfg.port}"]

    @override
    def build_part(
        self, step_id: str, for_part: str, resume_state: dict[str, int] | None
    ) -> _Partition:
        return _Partition(self, resume_state)
