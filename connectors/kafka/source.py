"""Kafka points source: the raw topic back into point batches, one partition at a time.

Each Kafka partition is a Bytewax partition of its own, so reading and decoding spread over
workers and processes. Edge flows key raw messages by shard (a site, or finer), so a shard's
points are in one partition, in order, and its operator state and watermark follow them.
``partitions`` selects Kafka partitions (several processors on disjoint sets).

The source checks the broker and topic when the flow starts and raises :class:`SourceError`
with the address instead of hanging. Each partition resumes from the offset in its snapshot,
can start at a message time (seek by time) and can stop at an end time or at the end offsets
as of start (bounded replays). Messages written by transactional producers are read only once
committed. Data the broker deleted (retention) before it was read is never skipped silently:
a bounded replay fails with the reason, a live processor reports it as one dead letter and
goes on. ``next_batch`` never blocks.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from confluent_kafka import Consumer, KafkaError
from confluent_kafka import TopicPartition as KafkaTopicPartition
from typing_extensions import override

from connectors.errors import SourceError
from connectors.kafka.config import KafkaInput
from flows.metrics import KAFKA_LAG
from flows.registry import History
from wire.points import PointsDecoder
from wire.records import DeadLetter, PointBatch, TagRef, to_ms

__all__ = ["KafkaPointsSource", "end_offsets", "partitions_of", "topic_history"]

log = logging.getLogger(__name__)


def _consumer(config: dict[str, Any]) -> Consumer:
    return Consumer(
        {
            "group.id": config.get("group.id", "edgeflow"),
            "enable.auto.commit": False,
            "enable.partition.eof": False,
            # Never skip silently: a position that retention deleted is an error we report.
            "auto.offset.reset": "error",
            "isolation.level": "read_committed",
            "log_level": 0,
            # librdkafka prefetches up to 64 MB per consumer (one per partition here): a
            # replay of 6 partitions held ~400 MB of fetched messages. 16 MB is a quarter of
            # that; with the default 1 s back-off after the queue fills, the fetch then
            # stalled a one-partition replay to half speed, 10 ms keeps it ahead of decoding
            # (`python -m bench.history`, day_kafka).
            "queued.max.messages.kbytes": 16_384,
            "fetch.queue.backoff.ms": 10,
            **config,
        }
    )


def partitions_of(topic: str, config: dict[str, Any], timeout_s: float) -> list[int]:
    """Return the topic's partitions; a clear :class:`SourceError` if unreachable or missing."""
    bootstrap = config.get("bootstrap.servers")
    consumer = _consumer(config)
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
    topic: str, *, end_ms: int | None, config: dict[str, Any], timeout_s: float = 10.0
) -> dict[int, int]:
    """Offset per partition where a bounded read stops (first message at or after end_ms)."""
    parts = partitions_of(topic, config, timeout_s)
    consumer = _consumer(config)
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


def _point_times(
    consumer: Consumer, tp: KafkaTopicPartition, timeout_s: float, *, to_end: bool = False
) -> list[int]:
    """Point times of the first message from ``tp``'s offset (``to_end``: of all to the end)."""
    consumer.assign([tp])
    out: list[int] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for m in consumer.consume(100, timeout=0.2):
            err = m.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    return out
                continue
            d = PointsDecoder().decode([m.key()], [m.value()])
            out.extend(int(t) for t in d.ts_ms.tolist())
            if out and not to_end:
                return out
    return out


def topic_history(cfg: KafkaInput) -> History:
    """First and last point time the topic holds, over the partitions ``cfg`` reads."""
    config = cfg.kafka.client_config()
    parts = partitions_of(cfg.topic, config, cfg.connect_timeout_s)
    wanted = parts if cfg.partitions is None else [p for p in parts if p in cfg.partitions]
    consumer = _consumer({**config, "enable.partition.eof": True, "auto.offset.reset": "earliest"})
    first: int | None = None
    last: int | None = None
    deleted = []
    try:
        for p in wanted:
            tp = KafkaTopicPartition(cfg.topic, p)
            low, high = consumer.get_watermark_offsets(tp, timeout=cfg.connect_timeout_s)
            if low > 0:
                deleted.append(f"{cfg.topic}:{p} offsets 0..{low - 1}")
            if high <= low:
                continue
            head = _point_times(consumer, KafkaTopicPartition(cfg.topic, p, low), 5.0)
            # The last messages may be transaction markers: decode a few before the end.
            tail = _point_times(
                consumer, KafkaTopicPartition(cfg.topic, p, max(low, high - 20)), 10.0, to_end=True
            )
            if head:
                first = min(head) if first is None else min(first, min(head))
            if tail:
                last = max(tail) if last is None else max(last, max(tail))
    finally:
        consumer.close()
    note = f"retention deleted {', '.join(deleted)}" if deleted else ""
    return History(first, last, note)


class _Partition(StatefulSourcePartition[PointBatch | DeadLetter, int]):
    """One Kafka partition; the snapshot is the offset of the next message to read."""

    def __init__(
        self, src: KafkaPointsSource, partition: int, resume: int | None, stop: int | None
    ) -> None:
        self.src, self.partition, self.stop = src, partition, stop
        self.name = f"{src.topic}:{partition}"
        cfg = src.cfg
        self.consumer = _consumer({**src.config, "enable.partition.eof": True})
        tp = KafkaTopicPartition(src.topic, partition)
        low, high = self.consumer.get_watermark_offsets(tp, timeout=cfg.connect_timeout_s)
        self.pending: list[PointBatch | DeadLetter] = []
        if resume is not None:
            offset = resume
            if resume < low:
                self._deleted(resume, low)
                offset = low
        elif src.start_ms is not None:
            (found,) = self.consumer.offsets_for_times(
                [KafkaTopicPartition(src.topic, partition, src.start_ms)],
                timeout=cfg.connect_timeout_s,
            )
            offset = found.offset if found.offset >= 0 else high
        else:
            offset = low if cfg.start == "earliest" else high
        self.next_offset = offset
        self.consumer.assign([KafkaTopicPartition(src.topic, partition, offset)])
        self.decoder = PointsDecoder()
        self._tags: tuple[TagRef, ...] = ()
        self.caught_up = False
        self._lag_at = 0.0
        self._message_bytes = 1 << 20  # running estimate; the first chunk is one message

    def _deleted(self, first: int, low: int) -> None:
        """Report offsets deleted before they were read: a replay fails, a live reader goes on."""
        deleted = f"offsets {first}..{low - 1} of {self.name}"
        if self.stop is not None:
            msg = (
                f"Kafka topic {self.src.topic!r} no longer holds {deleted}: retention deleted "
                "them before this replay read them; the replay cannot be exact (keep history "
                "in a topic with retention.ms=-1)"
            )
            raise SourceError(msg)
        log.error("%s: retention deleted %s before they were read", self.name, deleted)
        self.pending.append(
            DeadLetter(
                "kafka", f"retention deleted {deleted} before they were read", b"", source=self.name
            )
        )

    def _finished(self) -> bool:
        return self.stop is not None and self.next_offset >= self.stop

    def _measure_lag(self) -> None:
        """Export the partition's consumer lag, at most once a second (cached offsets)."""
        now = time.monotonic()
        if now - self._lag_at < 1.0:
            return
        tp = KafkaTopicPartition(self.src.topic, self.partition)
        _low, high = self.consumer.get_watermark_offsets(tp, cached=True)
        if high is not None and high >= 0:  # known once the consumer has fetched
            self._lag_at = now
            lag = max(0, high - self.next_offset)
            KAFKA_LAG.labels(self.src.cfg.id, self.src.topic, str(self.partition)).set(lag)

    @override
    def next_batch(self) -> list[PointBatch | DeadLetter]:
        if self.pending:
            out, self.pending = self.pending, []
            return out
        if self._finished():
            raise StopIteration
        self._measure_lag()
        msgs = []
        for m in self._fetched():
            err = m.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    self.caught_up = True
                    # Past a transaction marker (it has an offset, never a message).
                    self.next_offset = max(self.next_offset, int(m.offset() or 0))
                    continue
                if err.code() == KafkaError._AUTO_OFFSET_RESET:
                    # Our position was deleted under us (retention) while we read.
                    tp = KafkaTopicPartition(self.src.topic, self.partition)
                    low, _high = self.consumer.get_watermark_offsets(tp, timeout=10)
                    self._deleted(self.next_offset, low)
                    self.next_offset = low
                    self.consumer.assign([KafkaTopicPartition(self.src.topic, self.partition, low)])
                    break
                msg = f"Kafka error on {self.name}: {err}"
                raise SourceError(msg)
            offset = int(m.offset() or 0)
            if self.stop is not None and offset >= self.stop:
                break
            msgs.append(m)
            self.next_offset = offset + 1
        if not msgs:
            return []
        self.caught_up = False
        return self._decode(msgs)

    def _fetched(self) -> Iterator[Any]:
        """Messages already fetched, up to ``batch_size`` messages or ``batch_max_bytes``.

        A replay finds the whole prefetch queue ready (16 MB per partition): taken at once it
        decoded into hundreds of MB per batch, and a 2-process cluster held such batches in
        transit (measured: each process 1.37x the peak memory of one process reading the same
        share; 1.10x with 2 MB batches). Far smaller batches cost one worker speed (the
        operators' per-batch work).
        """
        cfg = self.src.cfg
        left, size = cfg.batch_size, 0
        while left > 0 and size < cfg.batch_max_bytes:
            # As many as the budget left holds at the message size seen so far (taken
            # messages cannot be put back): the batch ends near the budget, not far past it.
            fits = (cfg.batch_max_bytes - size) // self._message_bytes
            got = self.consumer.consume(max(1, min(left, fits)), timeout=0)
            if not got:
                return
            left -= len(got)
            for m in got:
                n = len(m.value() or b"")
                size += n
                self._message_bytes = max(1, (self._message_bytes * 7 + n) // 8)
                yield m

    def _decode(self, msgs: list[Any]) -> list[PointBatch | DeadLetter]:
        d = self.decoder.decode([m.key() for m in msgs], [m.value() for m in msgs])
        out: list[PointBatch | DeadLetter] = []
        if len(d):
            if len(self._tags) != len(d.tags):
                self._tags = tuple(d.tags)  # a new table only when new tags appear
            times = np.asarray([m.timestamp()[1] for m in msgs], np.int64)
            received = times[d.message]
            ts, keep = d.ts_ms, None
            if self.src.start_ms is not None or self.src.end_ms is not None:
                keep = np.ones(len(ts), np.bool_)
                if self.src.start_ms is not None:
                    keep &= ts >= self.src.start_ms
                if self.src.end_ms is not None:
                    keep &= ts < self.src.end_ms
            newest = int(received.max())
            extra: dict[str, Any] = {f: a for f, a in d.flags.items()}
            if int(received.min()) != newest:
                # Messages of several edge batches: keep each point's receive time, so
                # validation judges clock skew as it did at the edge.
                extra["received_ms"] = received
            batch = PointBatch(
                self._tags,
                d.tag_idx.astype(np.int32),
                ts,
                d.value,
                d.quality,
                source=self.name,
                received_ms=newest,
                extra=extra,
            )
            if keep is not None and not keep.all():
                batch = batch.select(keep)
            if len(batch):
                out.append(batch)
        for i, reason in d.errors:
            m = msgs[i]
            out.append(DeadLetter("kafka", reason, m.value() or b"", source=self.name))
        return out

    @override
    def next_awake(self) -> Any:
        from datetime import UTC, datetime, timedelta

        # Caught up with a live topic: ask again in a little while instead of spinning.
        if self.caught_up and self.stop is None:
            return datetime.now(UTC) + timedelta(milliseconds=20)
        return None

    @override
    def snapshot(self) -> int:
        return self.next_offset

    @override
    def close(self) -> None:
        self.consumer.close()


@dataclass(frozen=True)
class KafkaPointsSource(FixedPartitionedSource[PointBatch | DeadLetter, int]):
    """Read point batches from the configured topic; see the module docstring."""

    cfg: KafkaInput

    @property
    def config(self) -> dict[str, Any]:
        """The librdkafka settings (with secrets: only for creating clients)."""
        return self.cfg.kafka.client_config()

    @property
    def topic(self) -> str:
        """The topic read."""
        return self.cfg.topic

    @property
    def start_ms(self) -> int | None:
        """Seek position (message time) and lower bound of point times."""
        return None if self.cfg.start_time is None else to_ms(self.cfg.start_time)

    @property
    def end_ms(self) -> int | None:
        """Exclusive upper bound of point times (bounded replays)."""
        return None if self.cfg.end_time is None else to_ms(self.cfg.end_time)

    def _stop_offsets(self) -> dict[int, int] | None:
        end_ms = self.end_ms
        if end_ms is None and not self.cfg.bounded:
            return None
        # Messages are stamped with the edge receive time, which trails event time: read on a
        # little past the end and let the point filter cut exactly at end_ms.
        return end_offsets(
            self.topic,
            end_ms=None if end_ms is None else end_ms + 3_600_000,
            config=self.config,
            timeout_s=self.cfg.connect_timeout_s,
        )

    @override
    def list_parts(self) -> list[str]:
        available = partitions_of(self.topic, self.config, self.cfg.connect_timeout_s)
        wanted = available if self.cfg.partitions is None else sorted(self.cfg.partitions)
        missing = set(wanted) - set(available)
        if missing:
            msg = f"Kafka topic {self.topic!r} has no partitions {sorted(missing)}"
            raise SourceError(msg)
        return [f"{self.topic}:{p}" for p in wanted]

    @override
    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _Partition:
        p = int(for_part.rsplit(":", 1)[1])
        stops = self._stop_offsets()
        return _Partition(self, p, resume_state, None if stops is None else stops.get(p, 0))
