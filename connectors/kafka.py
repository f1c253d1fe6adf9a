"""Kafka source and sink with the guarantees Bytewax's own connectors lack.

- :class:`KafkaSink` produces with an idempotent producer (``acks=all``) and collects delivery
  reports; at every epoch snapshot (and at close) it waits until everything produced is
  acknowledged, so a snapshot never covers unconfirmed messages. A failed or unconfirmed
  delivery raises :class:`SinkError` (the flow stops loudly and resumes from its last
  snapshot: at-least-once, and sinks upsert). Waiting per epoch instead of per batch keeps
  the broker round trip off the hot path.
- :class:`KafkaPointsSource` checks the broker and topic when the flow starts and raises
  :class:`SourceError` with the address instead of hanging; each partition resumes from the
  offset in its snapshot, can start at a timestamp (seek by time) and can stop at an end
  timestamp (bounded replay for backtests). ``next_batch`` never blocks.

Security settings (``security.protocol``, ``sasl.*``, ``ssl.*``) pass through unchanged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
from confluent_kafka import Consumer, KafkaError, Producer
from confluent_kafka import TopicPartition as KafkaTopicPartition
from typing_extensions import override

from connectors.codec import PointsDecoder, TagTable
from connectors.errors import SinkError, SourceError
from operators.record import DeadLetter, PointBatch

__all__ = ["KafkaMessage", "KafkaPointsSource", "KafkaSink", "end_offsets"]

log = logging.getLogger(__name__)

KafkaMessage = tuple[str, bytes, int | None]
"""(key, value, timestamp ms or None) as produced by :class:`KafkaSink`."""


class _SinkPartition(StatefulSinkPartition[KafkaMessage, None]):
    def __init__(self, sink: KafkaSink) -> None:
        self.sink = sink
        conf = {
            "bootstrap.servers": sink.bootstrap_servers,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "compression.type": "lz4",
            "message.timeout.ms": int(sink.delivery_timeout_s * 1000),
            **sink.config,
        }
        self.producer = Producer(conf)
        self.errors: list[str] = []
        self.delivered = 0

    def _on_delivery(self, err: KafkaError | None, msg: Any) -> None:
        if err is not None:
            self.errors.append(f"{msg.topic()}[{msg.key()!r}]: {err}")
        else:
            self.delivered += 1

    def _raise_if_failed(self, unconfirmed: int = 0) -> None:
        if self.errors or unconfirmed:
            msg = (
                f"Kafka delivery to {self.sink.topic} at {self.sink.bootstrap_servers} failed: "
                f"{len(self.errors)} errors, {unconfirmed} unconfirmed; first: "
                f"{self.errors[0] if self.errors else 'timeout'}"
            )
            raise SinkError(msg)

    @override
    def write_batch(self, values: list[KafkaMessage]) -> None:
        for key, value, ts in values:
            while True:
                try:
                    self.producer.produce(
                        self.sink.topic,
                        key=key.encode(),
                        value=value,
                        timestamp=ts or 0,
                        headers={"content-type": self.sink.content_type},
                        on_delivery=self._on_delivery,
                    )
                    break
                except BufferError:
                    # Local queue full: serve delivery reports to make room, then retry.
                    self.producer.poll(0.1)
        self.producer.poll(0)  # serve delivery reports: a failure stops the flow early
        self._raise_if_failed()

    @override
    def snapshot(self) -> None:
        # The epoch's snapshot (the resume position of the sources) may only be committed
        # once everything written before it is acknowledged by the broker.
        self._raise_if_failed(self.producer.flush(self.sink.delivery_timeout_s))

    @override
    def close(self) -> None:
        self._raise_if_failed(self.producer.flush(self.sink.delivery_timeout_s))


@dataclass(frozen=True)
class KafkaSink(FixedPartitionedSink[KafkaMessage, None]):
    """Produce ``(key, value, timestamp_ms)`` messages to ``topic``; see module docs.

    Items arrive keyed (any routing key; one producer partition serves them all).
    """

    bootstrap_servers: str
    topic: str
    content_type: str = "application/json"
    delivery_timeout_s: float = 30.0
    config: dict[str, Any] = field(default_factory=dict)

    @override
    def list_parts(self) -> list[str]:
        return ["producer"]

    @override
    def part_fn(self, item_key: str) -> int:
        return 0

    @override
    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _SinkPartition:
        return _SinkPartition(self)


def _consumer(bootstrap: str, config: dict[str, Any]) -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": config.get("group.id", "edgeflow"),
            "enable.auto.commit": False,
            "enable.partition.eof": False,
            "auto.offset.reset": "earliest",
            **config,
        }
    )


def _partitions(bootstrap: str, topic: str, config: dict[str, Any], timeout_s: float) -> list[int]:
    consumer = _consumer(bootstrap, config)
    try:
        meta = consumer.list_topics(topic, timeout=timeout_s)
    except Exception as e:  # KafkaException: broker unreachable within the timeout
        msg = f"Kafka broker at {bootstrap} is unreachable (waited {timeout_s:g} s): {e}"
        raise SourceError(msg) from e
    finally:
        consumer.close()
    t = meta.topics.get(topic)
    if t is None or t.error is not None or not t.partitions:
        msg = f"Kafka topic {topic!r} does not exist on {bootstrap}: {t.error if t else 'missing'}"
        raise SourceError(msg)
    return sorted(t.partitions)


def end_offsets(
    bootstrap: str,
    topic: str,
    *,
    end_ms: int | None,
    config: dict[str, Any] | None = None,
    timeout_s: float = 10.0,
) -> dict[int, int]:
    """Offset per partition where a bounded read stops (first message at or after end_ms)."""
    cfg = config or {}
    parts = _partitions(bootstrap, topic, cfg, timeout_s)
    consumer = _consumer(bootstrap, cfg)
    try:
        out = {}
        for p in parts:
            _low, high = consumer.get_watermark_offsets(
                KafkaTopicPartition(topic, p), timeout=timeout_s
            )
            out[p] = high
        if end_ms is not None:
            found = consumer.offsets_for_times(
                [KafkaTopicPartition(topic, p, end_ms) for p in parts], timeout=timeout_s
            )
            for tp in found:
                if tp.offset >= 0:
                    out[tp.partition] = min(out[tp.partition], tp.offset)
        return out
    finally:
        consumer.close()


class _SourcePartition(StatefulSourcePartition[PointBatch | DeadLetter, dict[int, int]]):
    """Reads all assigned Kafka partitions and releases messages merged by timestamp.

    One reader for the partitions (instead of one Bytewax partition each) keeps tags from
    different partitions progressing together in event time, so a replay does not close
    windows that another partition still feeds. A message is released once every partition
    that is not caught up has fetched something at least as new; the snapshot is, per
    partition, the offset of the first message not yet released.
    """

    def __init__(self, src: KafkaPointsSource, resume: dict[int, int] | None) -> None:
        self.src = src
        self.consumer = _consumer(
            src.bootstrap_servers, {**src.config, "enable.partition.eof": True}
        )
        self.table = TagTable()
        parts: tuple[int, ...] = src.partitions or ()
        self.next_offset: dict[int, int] = {}
        assign = []
        for p in parts:
            tp = KafkaTopicPartition(src.topic, p)
            low, high = self.consumer.get_watermark_offsets(tp, timeout=src.connect_timeout_s)
            if resume is not None and p in resume:
                offset = resume[p]
            elif src.start_ms is not None:
                (found,) = self.consumer.offsets_for_times(
                    [KafkaTopicPartition(src.topic, p, src.start_ms)], timeout=src.connect_timeout_s
                )
                offset = found.offset if found.offset >= 0 else high
            else:
                offset = low if src.start == "earliest" else high
            self.next_offset[p] = offset
            assign.append(KafkaTopicPartition(src.topic, p, offset))
        self.consumer.assign(assign)
        # Fetched, not yet released messages per partition, with their timestamps.
        self.pending: dict[int, list[Any]] = {p: [] for p in parts}
        self.pending_ms: dict[int, list[int]] = {p: [] for p in parts}
        self.caught_up: dict[int, bool] = {p: False for p in parts}
        self.stop_at = src.stop_offsets or {}
        self.decoder = PointsDecoder()

    def _finished(self, p: int) -> bool:
        stop = self.stop_at.get(p)
        return stop is not None and self.next_offset[p] >= stop and not self.pending[p]

    def _fetch(self) -> None:
        for m in self.consumer.consume(self.src.batch_size, timeout=0):
            err = m.error()
            p = int(m.partition() or 0)
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    self.caught_up[p] = True
                    continue
                msg = f"Kafka error on {self.src.topic}[{p}]: {err}"
                raise SourceError(msg)
            stop = self.stop_at.get(p)
            if stop is not None and int(m.offset() or 0) >= stop:
                self.caught_up[p] = True
                continue
            self.caught_up[p] = False
            self.pending[p].append(m)
            self.pending_ms[p].append(m.timestamp()[1])

    @override
    def next_batch(self) -> list[PointBatch | DeadLetter]:
        if self.stop_at and all(self._finished(p) for p in self.pending):
            raise StopIteration
        self._fetch()
        # Release up to the oldest "newest fetched" time among partitions that are behind.
        behind = [
            p
            for p, msgs in self.pending.items()
            if not msgs and not self.caught_up[p] and not self._finished(p)
        ]
        if behind:
            return []
        bounds = [
            times[-1] for p, times in self.pending_ms.items() if times and not self.caught_up[p]
        ]
        bound = min(bounds) if bounds else None
        msgs: list[Any] = []
        keys: list[npt.NDArray[np.int64]] = []
        for p, times in self.pending_ms.items():
            if not times:
                continue
            t = np.asarray(times, np.int64)
            # A partition releases its messages in offset order, up to the first past the bound.
            over = np.flatnonzero(t > bound) if bound is not None else np.empty(0, np.intp)
            k = int(over[0]) if len(over) else len(t)
            if not k:
                continue
            part = self.pending[p]
            msgs += part[:k]
            self.next_offset[p] = int(part[k - 1].offset() or 0) + 1
            del part[:k], times[:k]
            keys.append(np.stack([t[:k], np.full(k, p, np.int64), np.arange(k, dtype=np.int64)]))
        if not msgs:
            return []
        key = np.concatenate(keys, axis=1)
        order = np.lexsort((key[2], key[1], key[0]))  # by time, then partition, then offset
        return self._decode([msgs[i] for i in order.tolist()], key[0][order])

    def _decode(
        self, msgs: list[Any], times: npt.NDArray[np.int64]
    ) -> list[PointBatch | DeadLetter]:
        d = self.decoder.decode([m.key() for m in msgs], [m.value() for m in msgs])
        out: list[PointBatch | DeadLetter] = []
        if d.refs:
            received = np.repeat(times[d.message], d.counts)
            idx = np.repeat(
                np.fromiter((self.table.index(r) for r in d.refs), np.int32, len(d.refs)),
                d.counts,
            )
            ts, val, q = d.ts_ms, d.value, d.quality
            if self.src.start_ms is not None or self.src.end_ms is not None:
                keep = np.ones(len(ts), np.bool_)
                if self.src.start_ms is not None:
                    keep &= ts >= self.src.start_ms
                if self.src.end_ms is not None:
                    keep &= ts < self.src.end_ms
                idx, ts, val, q, received = idx[keep], ts[keep], val[keep], q[keep], received[keep]
            if len(ts):
                newest = int(received.max())
                out.append(
                    PointBatch(
                        self.table.tags,
                        idx,
                        ts,
                        val,
                        q,
                        source=self.src.topic,
                        received_ms=newest,
                        # Messages from several edge batches: keep each point's receive time
                        # so validation judges clock skew as it did at the edge.
                        extra={} if int(received.min()) == newest else {"received_ms": received},
                    )
                )
        for i, reason in d.errors:
            m = msgs[i]
            out.append(
                DeadLetter(
                    "kafka", reason, m.value() or b"", source=f"{self.src.topic}:{m.partition()}"
                )
            )
        return out

    @override
    def snapshot(self) -> dict[int, int]:
        return dict(self.next_offset)

    @override
    def close(self) -> None:
        self.consumer.close()


@dataclass(frozen=True)
class KafkaPointsSource(FixedPartitionedSource[PointBatch | DeadLetter, dict[int, int]]):
    """Read point batches from ``topic``; undecodable messages become dead letters.

    ``start``: ``earliest``/``latest`` (without a snapshot), or ``start_ms`` to seek by
    message time; ``end_ms`` drops points at or after it and ``stop_offsets`` (per Kafka
    partition) bounds a replay. ``partitions`` limits the reader to some Kafka partitions
    (run several processors on disjoint subsets to scale out); default: all.
    """

    bootstrap_servers: str
    topic: str
    start: str = "earliest"
    start_ms: int | None = None
    end_ms: int | None = None
    stop_offsets: dict[int, int] | None = None
    partitions: tuple[int, ...] | None = None
    batch_size: int = 5000
    connect_timeout_s: float = 10.0
    config: dict[str, Any] = field(default_factory=dict)

    @override
    def list_parts(self) -> list[str]:
        available = _partitions(
            self.bootstrap_servers, self.topic, self.config, self.connect_timeout_s
        )
        wanted = available if self.partitions is None else sorted(self.partitions)
        missing = set(wanted) - set(available)
        if missing:
            msg = f"Kafka topic {self.topic!r} has no partitions {sorted(missing)}"
            raise SourceError(msg)
        return [f"{self.topic}:" + ",".join(map(str, wanted))]

    @override
    def build_part(
        self, step_id: str, for_part: str, resume_state: dict[int, int] | None
    ) -> _SourcePartition:
        parts = tuple(int(p) for p in for_part.rsplit(":", 1)[1].split(","))
        src = self if self.partitions == parts else replace(self, partitions=parts)
        return _SourcePartition(src, resume_state)
