"""Kafka source and sink with the guarantees Bytewax's own connectors lack.

- :class:`KafkaSink` produces with an idempotent producer (``acks=all``), collects delivery
  reports and, before ``write_batch`` returns, waits until every message of the batch is
  acknowledged; a failed or unconfirmed delivery raises :class:`SinkError` (the flow stops
  loudly and resumes from its last snapshot: at-least-once, and sinks upsert).
- :class:`KafkaPointsSource` checks the broker and topic when the flow starts and raises
  :class:`SourceError` with the address instead of hanging; each partition resumes from the
  offset in its snapshot, can start at a timestamp (seek by time) and can stop at an end
  timestamp (bounded replay for backtests). ``next_batch`` never blocks.

Security settings (``security.protocol``, ``sasl.*``, ``ssl.*``) pass through unchanged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaError, Producer
from confluent_kafka import TopicPartition as KafkaTopicPartition
from typing_extensions import override

from connectors.codec import CodecError, TagTable, decode_points
from connectors.errors import SinkError, SourceError
from operators.record import DeadLetter, PointBatch, TagRef

__all__ = ["KafkaMessage", "KafkaPointsSource", "KafkaSink", "end_offsets"]

log = logging.getLogger(__name__)

KafkaMessage = tuple[str, bytes, int | None]
"""(key, value, timestamp ms or None) as produced by :class:`KafkaSink`."""


class _SinkPartition(StatelessSinkPartition[KafkaMessage]):
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

    @override
    def write_batch(self, items: list[KafkaMessage]) -> None:
        for key, value, ts in items:
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
        left = self.producer.flush(self.sink.delivery_timeout_s)
        if self.errors or left:
            msg = (
                f"Kafka delivery to {self.sink.topic} at {self.sink.bootstrap_servers} failed: "
                f"{len(self.errors)} errors, {left} unconfirmed; first: "
                f"{self.errors[0] if self.errors else 'timeout'}"
            )
            raise SinkError(msg)

    @override
    def close(self) -> None:
        self.producer.flush(self.sink.delivery_timeout_s)


@dataclass(frozen=True)
class KafkaSink(DynamicSink[KafkaMessage]):
    """Produce ``(key, value, timestamp_ms)`` messages to ``topic``; see module docs."""

    bootstrap_servers: str
    topic: str
    content_type: str = "application/json"
    delivery_timeout_s: float = 30.0
    config: dict[str, Any] = field(default_factory=dict)

    @override
    def build(self, step_id: str, worker_index: int, worker_count: int) -> _SinkPartition:
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


class _SourcePartition(StatefulSourcePartition[PointBatch | DeadLetter, int]):
    def __init__(self, src: KafkaPointsSource, partition: int, resume: int | None) -> None:
        self.src = src
        self.partition = partition
        self.consumer = _consumer(src.bootstrap_servers, src.config)
        self.table = TagTable()
        self.stop_at = None if src.stop_offsets is None else src.stop_offsets.get(partition)
        if resume is not None:
            offset = resume
        elif src.start_ms is not None:
            (tp,) = self.consumer.offsets_for_times(
                [KafkaTopicPartition(src.topic, partition, src.start_ms)], timeout=10
            )
            offset = tp.offset if tp.offset >= 0 else OFFSET_END
        else:
            offset = OFFSET_BEGINNING if src.start == "earliest" else OFFSET_END
        if offset in (OFFSET_BEGINNING, OFFSET_END):
            # A real offset lets a bounded read know when it is done, even on empty partitions.
            low, high = self.consumer.get_watermark_offsets(
                KafkaTopicPartition(src.topic, partition), timeout=src.connect_timeout_s
            )
            offset = low if offset == OFFSET_BEGINNING else high
        self.next_offset = offset
        self.consumer.assign([KafkaTopicPartition(src.topic, partition, offset)])

    def _done(self) -> bool:
        return (
            self.stop_at is not None
            and self.next_offset >= 0
            and (self.next_offset >= self.stop_at)
        )

    @override
    def next_batch(self) -> list[PointBatch | DeadLetter]:
        if self._done():
            raise StopIteration
        msgs = self.consumer.consume(self.src.batch_size, timeout=0)
        if not msgs:
            return []
        out: list[PointBatch | DeadLetter] = []
        idx, ts, val, q = [], [], [], []
        received = 0
        for m in msgs:
            err = m.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    continue
                msg = f"Kafka error on {self.src.topic}[{self.partition}]: {err}"
                raise SourceError(msg)
            offset = int(m.offset() or 0)
            if self.stop_at is not None and offset >= self.stop_at:
                self.next_offset = offset
                break
            self.next_offset = offset + 1
            try:
                path, unit, t, v, qq = decode_points(m.key(), m.value())
            except CodecError as e:
                out.append(DeadLetter("kafka", str(e), m.value() or b"", source=self.src.topic))
                continue
            if self.src.start_ms is not None or self.src.end_ms is not None:
                keep = np.ones(len(t), np.bool_)
                if self.src.start_ms is not None:
                    keep &= t >= self.src.start_ms
                if self.src.end_ms is not None:
                    keep &= t < self.src.end_ms
                t, v, qq = t[keep], v[keep], qq[keep]
            i = self.table.index(TagRef(path, unit))
            idx.append(np.full(len(t), i, np.int32))
            ts.append(t)
            val.append(v)
            q.append(qq)
            received = max(received, m.timestamp()[1])
        if idx:
            out.insert(
                0,
                PointBatch(
                    self.table.tags,
                    np.concatenate(idx),
                    np.concatenate(ts),
                    np.concatenate(val),
                    np.concatenate(q),
                    source=self.src.topic,
                    received_ms=received,
                ),
            )
        return out

    @override
    def snapshot(self) -> int:
        return self.next_offset

    @override
    def close(self) -> None:
        self.consumer.close()


@dataclass(frozen=True)
class KafkaPointsSource(FixedPartitionedSource[PointBatch | DeadLetter, int]):
    """Read point batches from ``topic``; undecodable messages become dead letters.

    ``start``: ``earliest``/``latest`` (without a snapshot), or ``start_ms`` to seek by
    message time; ``end_ms`` bounds a replay (points at or after it are dropped from the read
    and the partition ends once its messages pass it, via ``stop_offsets``).
    """

    bootstrap_servers: str
    topic: str
    start: str = "earliest"
    start_ms: int | None = None
    end_ms: int | None = None
    stop_offsets: dict[int, int] | None = None
    batch_size: int = 5000
    connect_timeout_s: float = 10.0
    config: dict[str, Any] = field(default_factory=dict)

    @override
    def list_parts(self) -> list[str]:
        parts = _partitions(self.bootstrap_servers, self.topic, self.config, self.connect_timeout_s)
        return [f"{self.topic}:{p}" for p in parts]

    @override
    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _SourcePartition:
        return _SourcePartition(self, int(for_part.rsplit(":", 1)[1]), resume_state)
