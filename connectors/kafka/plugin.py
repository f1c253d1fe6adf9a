"""Registers the Kafka input and sink."""

from __future__ import annotations

from functools import partial
from typing import Any

import bytewax.operators as op

from connectors._spool_options import spool_home
from connectors.kafka.config import KafkaInput, KafkaSinkConfig
from connectors.kafka.sink import KafkaMessage, KafkaSink, SpoolSettings
from connectors.kafka.source import KafkaPointsSource
from flows.build import Build
from flows.registry import register, register_command
from flows.streams import rows_of
from wire.points import CONTENT_TYPES, Encoding, encode_messages, encode_row
from wire.records import PointBatch

__all__ = ["build_input", "build_sink"]


@register("input", "kafka", KafkaInput, emits=("raw", "dead_letters"), sample="input_sample.yaml")
def build_input(cfg: KafkaInput, b: Build) -> None:
    """Read point batches from the raw topic, one Bytewax partition per Kafka partition."""
    b.input(cfg.id, KafkaPointsSource(cfg))


def _point_messages(
    encoding: Encoding, levels: int, max_points: int, batch: PointBatch
) -> list[tuple[str, KafkaMessage]]:
    # Keyed by shard: a shard's messages stay in one partition, in order. The message time is
    # the edge receive time (seek-by-time and skew checks use it).
    return [
        (key, (key, value, batch.received_ms or ts))
        for key, value, ts in encode_messages(
            batch, encoding, shard_levels=levels, max_points=max_points
        )
    ]


def _row_messages(stream: str, item: Any) -> list[tuple[str, KafkaMessage]]:
    out: list[tuple[str, KafkaMessage]] = []
    for row in rows_of(stream, item):
        ts = row.get("ts_ms", row.get("start_ms"))
        key = str(row.get("path") or row.get("payload", {}).get("path") or stream)
        out.append((key, (key, encode_row(row), ts if isinstance(ts, int) else None)))
    return out


@register(
    "sink",
    "kafka",
    KafkaSinkConfig,
    needs=lambda cfg: tuple(cfg.topics),
    sample="sink_sample.yaml",
)
def build_sink(cfg: KafkaSinkConfig, b: Build) -> None:
    """One spooled producer step per subscribed stream."""
    ident = b.site.site
    spool_root, path = spool_home(b.site, cfg)
    for name, topic in cfg.topics.items():
        if not b.has(name):
            continue
        stream = b.stream(name, cfg.id)
        if name in ("raw", "points"):
            encode = partial(
                _point_messages, cfg.encoding, ident.shard_levels, cfg.max_points_per_message
            )
            msgs = op.flat_map(f"{cfg.id}_{name}_enc", stream, encode)
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
                SpoolSettings(
                    spool_root / name,
                    max_bytes=cfg.spool_max_bytes,
                    max_age_s=cfg.spool_max_age_s,
                    overflow=cfg.spool_overflow,
                ),
                sink_id=cfg.id,
                path=path,
                content_type=ctype,
                delivery_timeout_s=cfg.delivery_timeout_s,
                close_timeout_s=cfg.close_timeout_s,
                partitions=cfg.sink_partitions,
            ),
        )


def _load(argv: list[str]) -> int:
    from connectors.kafka.load import main

    return main(argv)


register_command("load", _load, "write a CSV/Parquet history into a raw topic (data time)")
