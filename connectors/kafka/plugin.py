"""Registers the Kafka input and sink."""

from __future__ import annotations

from functools import partial
from typing import Any

import bytewax.operators as op

from connectors.kafka.config import KafkaInput, KafkaSinkConfig
from connectors.kafka.sink import KafkaMessage, KafkaSink
from connectors.kafka.source import KafkaPointsSource
from flows.build import Build
from flows.registry import register
from flows.streams import rows_of
from wire.points import CONTENT_TYPES, Encoding, encode_points, encode_row
from wire.records import PointBatch

__all__ = ["build_input", "build_sink"]


@register("input", "kafka", KafkaInput, emits=("raw", "dead_letters"), sample="input_sample.yaml")
def build_input(cfg: KafkaInput, b: Build) -> None:
    """Read point batches from the raw topic."""
    b.input(cfg.id, KafkaPointsSource(cfg))


def _point_messages(encoding: Encoding, batch: PointBatch) -> list[tuple[str, KafkaMessage]]:
    # Stamp messages with the edge receive time: seek-by-time and skew checks use it.
    return [("", (k, v, batch.received_ms or ts)) for k, v, ts in encode_points(batch, encoding)]


def _row_messages(stream: str, item: Any) -> list[tuple[str, KafkaMessage]]:
    out: list[tuple[str, KafkaMessage]] = []
    for row in rows_of(stream, item):
        ts = row.get("ts_ms", row.get("start_ms"))
        key = row.get("path") or row.get("payload", {}).get("path") or stream
        out.append(("", (str(key), encode_row(row), ts if isinstance(ts, int) else None)))
    return out


@register(
    "sink",
    "kafka",
    KafkaSinkConfig,
    needs=lambda cfg: tuple(cfg.topics),
    sample="sink_sample.yaml",
)
def build_sink(cfg: KafkaSinkConfig, b: Build) -> None:
    """One producer step per subscribed stream; points binary-encoded, other rows as JSON."""
    for name, topic in cfg.topics.items():
        if not b.has(name):
            continue
        stream = b.stream(name, cfg.id)
        if name in ("raw", "points"):
            msgs = op.flat_map(
                f"{cfg.id}_{name}_enc", stream, partial(_point_messages, cfg.encoding)
            )
            ctype = CONTENT_TYPES[cfg.encoding]
        else:
            msgs = op.flat_map(f"{cfg.id}_{name}_enc", stream, partial(_row_messages, name))
            ctype = "application/json"
        op.output(
            f"{cfg.id}_{name}",
            msgs,
            KafkaSink(
                topic,
                cfg.kafka,
                content_type=ctype,
                delivery_timeout_s=cfg.delivery_timeout_s,
            ),
        )
