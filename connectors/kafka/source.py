"""Kafka points source: the raw topic back into point batches.

:class:`KafkaPointsSource` checks the broker and topic when the flow starts and raises
:class:`SourceError` with the address instead of hanging; each partition resumes from the
offset in its snapshot, can start at a timestamp (seek by time) and can stop at an end
timestamp (bounded replay for backtests). ``next_batch`` never blocks.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from confluent_kafka import Consumer, KafkaError
from confluent_kafka import TopicPartition as KafkaTopicPartition
from typing_extensions import override

from connectors.errors import SourceError
from connectors.kafka.config import KafkaInput
from wire.points import PointsDecoder
from wire.records import DeadLetter, PointBatch, TagTable, to_ms

__all__ = ["KafkaPointsSource", "end_offsets"]

log = logging.getLogger(__name__)


def _consumer(config: dict[str, Any]) -> Consumer:
    return Consumer(
        {
            "group.id": config.get("group.id", "edgeflow"),
            "enable.auto.commit": False,
            "enable.partition.eof": False,
            "auto.offset.reset": "earliest",
            **config,
        }
    )


def _partitions(topic: str, config: dict[str, Any], timeout_s: float) -> list[int]:
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
    parts = _partitions(topic, config, timeout_s)
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


class _SourcePartition(StatefulSourcePartition[PointBatch | DeadLetter, dict[int, int]]):
    """Reads all assigned Kafka partitions and releases messages merged by timestamp.

    One reader for the partitions (instead of one Bytewax partition each) keeps tags from
    different partitions progressing together in event time, so a replay does not close
    windows that another partition still feeds. A message is released once every partition
    that is not caught up has fetched something at least as new; the snapshot is, per
    partition, the offset of the first message not yet released.
    """

    def __init__(
        self,
        src: KafkaPointsSource,
        parts: tuple[int, ...],
        resume: dict[int, int] | None,
        stop_offsets: dict[int, int] | None,
    ) -> None:
        self.src = src
        self.consumer = _consumer({**src.config, "enable.partition.eof": True})
        self.table = TagTable()
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
        self.stop_at = stop_offsets or {}
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
    """Read point batches from the configured topic; undecodable messages become dead letters.

    ``start``: ``earliest``/``latest`` (without a snapshot), or ``start_time`` to seek by
    message time; ``end_time`` drops points at or after it and bounds the replay, as does
    ``bounded`` (the end offsets as of start). ``partitions`` limits the reader to some Kafka
    partitions (several processors on disjoint subsets); default: all.
    """

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
    def start(self) -> str:
        """Where to start without a snapshot or start time."""
        return self.cfg.start

    @property
    def start_ms(self) -> int | None:
        """Seek position (message time) and lower bound of point times."""
        return None if self.cfg.start_time is None else to_ms(self.cfg.start_time)

    @property
    def end_ms(self) -> int | None:
        """Exclusive upper bound of point times (bounded replays)."""
        return None if self.cfg.end_time is None else to_ms(self.cfg.end_time)

    @property
    def batch_size(self) -> int:
        """Messages fetched per call."""
        return self.cfg.batch_size

    @property
    def connect_timeout_s(self) -> float:
        """How long to wait for the broker."""
        return self.cfg.connect_timeout_s

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
            timeout_s=self.connect_timeout_s,
        )

    @override
    def list_parts(self) -> list[str]:
        available = _partitions(self.topic, self.config, self.connect_timeout_s)
        wanted = available if self.cfg.partitions is None else sorted(self.cfg.partitions)
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
        return _SourcePartition(self, parts, resume_state, self._stop_offsets())
