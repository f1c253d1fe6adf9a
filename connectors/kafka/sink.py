"""Kafka sink with store-and-forward: a durable local spool, then the broker, exactly once.

The worker never waits for the broker. ``write_batch`` appends messages to a spool on disk
(:mod:`connectors._spool`); each epoch's snapshot makes them durable. A delivery thread
produces what is spooled, oldest first, with an idempotent producer, and acknowledges it in
the spool when the broker confirmed it. While the broker is unreachable (at start or for a
day) the flow keeps running and the spool grows, within its bounds; when the broker is back
the backlog drains in order, as fast as the broker takes it, while new data keeps coming.

No message is delivered twice, also across ``kill -9``:

- with recovery (``-r DIR``), an epoch is delivered only once the recovery store committed it
  (its frontier moved past it): a replay after a crash regenerates only epochs that were never
  delivered. Delivery runs in Kafka transactions: a crash mid-transaction leaves nothing
  visible to consumers reading committed data, and the next run aborts it;
- every message carries its spool's id and sequence number (headers ``edgeflow-spool``,
  ``edgeflow-seq``); after a restart, and after any send that failed part way (the broker
  went away mid-send), the thread reads what the topic holds from its spool since the last
  recorded offsets and does not send those messages again.

Connection changes are one log line and one ``source``-style event each (via
:mod:`flows.system`), librdkafka's per-attempt lines are silenced, and no outage ever raises
into the flow. At the end of a bounded run the sink delivers what is left, up to
``close_timeout_s``; what it cannot deliver stays in the spool and the run exits non-zero
saying so (:func:`flows.lifecycle.fail_at_exit`).
"""

from __future__ import annotations

import contextlib
import logging
import struct
import threading
import time
import uuid
import zlib
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka import TopicPartition as KafkaTopicPartition
from typing_extensions import override

from connectors._io import Backoff, Link
from connectors._spool import Spool
from connectors._spooled import spool_ready
from connectors.kafka.config import KafkaConnection
from flows import system
from flows.lifecycle import fail_at_exit
from flows.metrics import SINK_BUFFERED, SINK_LATENCY, SINK_RETRIES, SINK_ROWS, register_check
from flows.recovery import committed_frontier, epoch_bound, recovery_dir

__all__ = ["KafkaMessage", "KafkaSink", "SpoolSettings"]

log = logging.getLogger(__name__)

KafkaMessage = tuple[str, bytes, int | None]
"""(key, value, timestamp ms or None)."""

_REC = struct.Struct("<qH")  # timestamp (-1: none), key length


@dataclass(frozen=True)
class SpoolSettings:
    """Where and how much a sink spools (see :class:`connectors._spool.Spool`)."""

    directory: Path
    max_bytes: int = 10 * 1024**3
    max_age_s: float = 86_400.0
    overflow: str = "drop_oldest"


def _pack(key: str, value: bytes, ts: int | None) -> bytes:
    k = key.encode()
    return _REC.pack(-1 if ts is None else ts, len(k)) + k + value


def _unpack(data: bytes) -> tuple[bytes, bytes, int | None]:
    ts, klen = _REC.unpack_from(data, 0)
    k = data[_REC.size : _REC.size + klen]
    return k, data[_REC.size + klen :], None if ts < 0 else ts


class _Delivery(threading.Thread):
    """Moves spooled messages to the broker; never raises into the flow."""

    def __init__(self, part: _SinkPartition) -> None:
        super().__init__(name=f"edgeflow-kafka-{part.name}", daemon=True)
        self.part = part
        self.sink = part.sink
        self.spool = part.spool
        self.stop = threading.Event()
        self.draining = threading.Event()  # close(): deliver everything, committed or not
        self.recovery = recovery_dir()
        self.link = Link(
            part.sink.sink_id,
            f"kafka://{part.sink.connection.bootstrap_servers}/{part.sink.topic}",
            part.sink.path,
            system.post,
            kind="sink",
        )
        register_check("sink", part.name, partial(spool_ready, self.link, self.spool))
        self.producer: Producer | None = None
        self.transactional = self.recovery is not None
        self.delivered = 0
        self.errors: list[str] = []
        self.auth_error = ""
        # Seqs the topic already holds (None: not looked yet; again after every failure).
        self.skip: set[int] | None = None

    # -- producer --------------------------------------------------------------------------
    def _error(self, err: KafkaError) -> None:
        if err.code() == KafkaError._AUTHENTICATION:
            # The most useful reason there is; a later "transport failure" must not hide it.
            self.auth_error = err.str()
            self.link.down(err.str())
        elif err.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT) or err.fatal():
            self.link.down(self.auth_error or err.str())

    def _producer(self) -> Producer:
        sink = self.sink
        conf: dict[str, Any] = {
            **sink.connection.client_config(),
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "compression.type": "lz4",
            "message.timeout.ms": int(sink.delivery_timeout_s * 1000),
            "error_cb": self._error,
            "log_level": 0,  # librdkafka repeats each failed attempt: one state change is ours
        }
        if self.transactional:
            conf["transactional.id"] = f"edgeflow.{sink.path}.{sink.topic}.{self.part.index}"
            conf["transaction.timeout.ms"] = max(60_000, int(sink.delivery_timeout_s * 2000))
        p = Producer(conf)
        if self.transactional:
            p.init_transactions(sink.delivery_timeout_s)  # aborts what a crashed run left open
        return p

    def _on_delivery(self, err: KafkaError | None, msg: Any) -> None:
        if err is not None:
            self.errors.append(err.str())
        else:
            self.part.offsets[int(msg.partition())] = int(msg.offset())

    # -- what the topic already holds ------------------------------------------------------
    def _already_delivered(self) -> set[int]:
        """Return the seqs of this spool after the acknowledged one that the topic holds.

        A send that failed part way (the broker went away) may have written some of its
        messages, on some partitions: exactly those are not sent again.
        """
        sink, spool = self.sink, self.spool
        offsets: dict[str, int] = spool.meta.get("offsets", {})
        conf = {
            **sink.connection.client_config(),
            "group.id": f"edgeflow-spool-scan-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            # The end of a partition is reported: transaction markers take offsets of their
            # own, so counting up to the high watermark would wait for messages never read.
            "enable.partition.eof": True,
            "error_cb": self._error,
            "log_level": 0,
        }
        c = Consumer(conf)
        found: set[int] = set()
        sid = spool.meta["id"].encode()
        try:
            meta = c.list_topics(sink.topic, timeout=sink.delivery_timeout_s)
            topic = meta.topics.get(sink.topic)
            if topic is None or topic.error is not None:
                return found
            for p in topic.partitions:
                low, high = c.get_watermark_offsets(
                    KafkaTopicPartition(sink.topic, p), timeout=sink.delivery_timeout_s
                )
                start = max(low, offsets.get(str(p), max(low, high - 20_000)))
                if start >= high:
                    continue
                c.assign([KafkaTopicPartition(sink.topic, p, start)])
                deadline = time.monotonic() + sink.delivery_timeout_s
                at_end = False
                while not at_end and time.monotonic() < deadline:
                    for m in c.consume(1000, timeout=0.5):
                        err = m.error()
                        if err is not None:
                            at_end = at_end or err.code() == KafkaError._PARTITION_EOF
                            continue
                        h = dict(m.headers() or [])
                        seq = h.get("edgeflow-seq")
                        if h.get("edgeflow-spool") == sid and seq:
                            raw = seq.encode() if isinstance(seq, str) else seq
                            n = struct.unpack("<q", raw)[0]
                            if n > spool.acked:
                                found.add(n)
                if not at_end:
                    msg = f"could not read {sink.topic}[{p}] to its end to find what it holds"
                    raise RuntimeError(msg)
        finally:
            c.close()
        return found

    # -- the loop ------------------------------------------------------------------------------
    def run(self) -> None:
        backoff = Backoff(max_s=5.0)
        frontier_at = 0.0
        frontier: int | None = None
        while not self.stop.is_set():
            try:
                if self.producer is None:
                    self.producer = self._producer()
                if self.skip is None:
                    self.skip = self._already_delivered()
                if self.transactional and not self.draining.is_set():
                    now = time.monotonic()
                    if now - frontier_at > 0.2:
                        assert self.recovery is not None
                        frontier, frontier_at = committed_frontier(self.recovery), now
                    limit = -1 if frontier is None else frontier - 1
                else:
                    limit = 1 << 62
                records = self.spool.read(self.spool.acked, 5000)
                # Records of an earlier run that was not resumed are never replayed.
                records = [r for r in records if r.epoch <= limit or r.seq <= self.part.legacy]
                if not records:
                    if self.draining.is_set() and not self.spool.pending():
                        return
                    self.stop.wait(0.05)
                    continue
                todo = [r for r in records if r.seq not in self.skip]
                SINK_BUFFERED.labels(self.part.name).set(self.spool.pending())
                if todo:
                    t0 = time.monotonic()
                    self._send(todo)
                    SINK_LATENCY.labels(self.part.name).observe(time.monotonic() - t0)
                    SINK_ROWS.labels(self.part.name).inc(len(todo))
                self.skip.difference_update(r.seq for r in records)
                self.spool.ack(records[-1].seq)
                self.spool.save_meta(offsets={str(k): v for k, v in self.part.offsets.items()})
                self.delivered += len(records)
                self.auth_error = ""
                self.link.up()
                backoff.reset()
            except (KafkaException, BufferError, RuntimeError) as e:
                SINK_RETRIES.labels(self.part.name).inc()
                self.link.down(self.auth_error or str(e.args[0] if e.args else e))
                self._reset()
                self.stop.wait(backoff.next_delay())

    def _send(self, records: list[Any]) -> None:
        p = self.producer
        assert p is not None
        sink = self.sink
        sid = self.spool.meta["id"].encode()
        self.errors = []
        if self.transactional:
            p.begin_transaction()
        for r in records:
            key, value, ts = _unpack(r.data)
            headers = [
                ("content-type", sink.content_type.encode()),
                ("edgeflow-spool", sid),
                ("edgeflow-seq", struct.pack("<q", r.seq)),
            ]
            while True:
                try:
                    p.produce(
                        sink.topic,
                        key=key,
                        value=value,
                        timestamp=ts or 0,
                        headers=headers,
                        on_delivery=self._on_delivery,
                    )
                    break
                except BufferError:
                    p.poll(0.05)  # the local queue is full: serve delivery reports
                    if self.stop.is_set():
                        raise
        if self.transactional:
            p.commit_transaction(sink.delivery_timeout_s)
        else:
            left = p.flush(sink.delivery_timeout_s)
            if left:
                msg = f"{left} messages not confirmed within {sink.delivery_timeout_s:g} s"
                raise RuntimeError(msg)
        if self.errors:
            msg = f"delivery failed: {self.errors[0]}"
            raise RuntimeError(msg)

    def _reset(self) -> None:
        self.skip = None
        p, self.producer = self.producer, None
        if p is not None and self.transactional:
            # The next producer's init_transactions fences it anyway.
            with contextlib.suppress(KafkaException):
                p.abort_transaction(1.0)


class _SinkPartition(StatefulSinkPartition[KafkaMessage, dict[str, int]]):
    def __init__(self, sink: KafkaSink, index: int, resume: dict[str, int] | None) -> None:
        self.sink, self.index = sink, index
        self.name = f"{sink.sink_id}:{sink.topic}:{index}"
        settings = sink.spool
        self.spool = Spool(
            settings.directory / sink.topic / f"part-{index}",
            max_bytes=settings.max_bytes,
            max_age_s=settings.max_age_s,
            overflow="drop_newest" if settings.overflow == "drop_newest" else "drop_oldest",
            on_overflow=self._overflow,
        )
        if "id" not in self.spool.meta:
            self.spool.save_meta(id=uuid.uuid4().hex)
        self.legacy = -1
        if resume is not None:
            # Records spooled after the snapshot are produced again by the replay.
            self.spool.truncate(resume["seq"])
        else:
            self.legacy = self.spool.written  # left by a run that is not resumed
        self.offsets: dict[int, int] = {}
        self.delivery = _Delivery(self)
        self.delivery.start()

    def _overflow(self, count: int, why: str) -> None:
        from wire.records import Event, now_ms

        system.post(
            Event(
                kind="spool",
                rule=self.sink.sink_id,
                path=self.sink.path,
                ts_ms=now_ms(),
                severity="major",
                state="overflow",
                message=f"spool for {self.sink.topic}: {count} messages dropped ({why})",
                details={"dropped": count, "policy": self.sink.spool.overflow},
            )
        )

    @override
    def write_batch(self, values: list[KafkaMessage]) -> None:
        for key, value, ts in values:
            # A sink partition is snapshotted only in epochs it had data: its own count of
            # snapshots would lag. The inputs' epoch bounds the epoch of what arrives now.
            self.spool.append(_pack(key, value, ts), epoch_bound())
        self.spool.flush()

    @override
    def snapshot(self) -> dict[str, int]:
        return {"seq": self.spool.sync()}

    @override
    def close(self) -> None:
        self.spool.sync()
        d = self.delivery
        d.draining.set()  # the run is ending: deliver everything that is left
        d.join(self.sink.close_timeout_s)
        d.stop.set()
        d.join(2.0)
        left = self.spool.pending()
        if self.delivery.producer is not None:
            self.delivery.producer.flush(1.0)
        self.spool.close()
        if left:
            msg = (
                f"{left} messages for Kafka topic {self.sink.topic} were not delivered within "
                f"{self.sink.close_timeout_s:g} s; they are kept in {self.spool.dir} and "
                "delivered by the next run"
            )
            log.error("%s", msg)
            fail_at_exit(msg)


@dataclass(frozen=True)
class KafkaSink(FixedPartitionedSink[KafkaMessage, dict[str, int]]):
    """Spool, then produce ``(key, value, timestamp_ms)`` messages to ``topic``; see above.

    ``partitions`` sink partitions (each with its own spool and producer) share the work;
    a message goes to ``crc32(key) % partitions``, so a key's messages stay in order.
    """

    topic: str
    connection: KafkaConnection
    spool: SpoolSettings
    sink_id: str = "kafka"
    path: str = ""
    content_type: str = "application/json"
    delivery_timeout_s: float = 30.0
    close_timeout_s: float = 30.0
    partitions: int = 1

    @override
    def list_parts(self) -> list[str]:
        return [str(i) for i in range(self.partitions)]

    @override
    def part_fn(self, item_key: str) -> int:
        return zlib.crc32(item_key.encode()) % self.partitions

    @override
    def build_part(
        self, step_id: str, for_part: str, resume_state: dict[str, int] | None
    ) -> _SinkPartition:
        return _SinkPartition(self, int(for_part), resume_state)
