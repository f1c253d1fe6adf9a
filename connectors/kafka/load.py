"""``edgeflow load``: write a history file's points into a raw topic, stamped with data time.

The site file gives the site identity and the ``file`` input that reads the history (its
column mapping); ``--file`` replaces the path. Messages are keyed by shard like an edge flow's
(one shard's points in one partition, in the file's order), cover at most
``--message-span-s`` of data time (a point written late rides with the points written around
it) and are stamped with their newest point time, so a backtest seeks by time and judges
clock skew as live. Kafka deletes by message time: the topic is created with
``retention.ms=-1``; an existing topic that would delete (or re-stamp) the history is refused
with the reason, before anything is written.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import (  # type: ignore[attr-defined]  # re-exported without __all__
    AdminClient,
    ConfigResource,
    NewTopic,
)

from connectors.errors import SourceError
from connectors.files.config import FileInput
from connectors.files.source import read_points, time_span
from flows.config import load_site
from flows.errors import ConfigError
from wire.errors import EdgeflowError
from wire.points import encode_messages
from wire.records import PointBatch, ms_to_iso, now_ms

__all__ = ["LoadError", "check_topic", "load", "main"]

_DAY_MS = 86_400_000


class LoadError(SourceError):
    """The history cannot be loaded as asked (the topic would lose it, the broker refused)."""


def _admin(bootstrap: str, timeout_s: float) -> AdminClient:
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    try:
        admin.list_topics(timeout=timeout_s)
    except KafkaException as e:
        msg = f"Kafka broker at {bootstrap} is unreachable (waited {timeout_s:g} s): {e}"
        raise LoadError(msg) from e
    return admin


def check_topic(
    admin: AdminClient, topic: str, *, oldest_ms: int, partitions: int, timeout_s: float = 10.0
) -> str:
    """Create ``topic`` keeping history, or check that it keeps ``oldest_ms``; say which."""
    meta = admin.list_topics(timeout=timeout_s)
    if topic not in meta.topics:
        fut = admin.create_topics(
            [
                NewTopic(
                    topic,
                    num_partitions=partitions,
                    replication_factor=1,
                    config={"retention.ms": "-1", "retention.bytes": "-1"},
                )
            ]
        )[topic]
        fut.result(timeout_s)
        return f"created {topic} ({partitions} partitions, retention.ms=-1)"
    res = ConfigResource(ConfigResource.Type.TOPIC, topic)
    cfg = admin.describe_configs([res])[res].result(timeout_s)

    def value(name: str) -> str | None:
        entry = cfg.get(name)
        return None if entry is None else str(entry.value)

    problems = []
    if value("message.timestamp.type") == "LogAppendTime":
        problems.append(
            "it stamps messages with the time they arrive (message.timestamp.type="
            "LogAppendTime), so replays could not seek by data time"
        )
    retention = int(value("retention.ms") or -1)
    age_ms = now_ms() - oldest_ms
    if retention >= 0 and age_ms > retention:
        problems.append(
            f"it keeps messages for {retention / _DAY_MS:g} days (retention.ms={retention}) and "
            f"the history starts {age_ms / _DAY_MS:.1f} days ago: Kafka would delete it soon "
            "after writing"
        )
    before_max = value("message.timestamp.before.max.ms")
    if before_max is not None and int(before_max) < age_ms:
        problems.append(
            f"it refuses message times older than {int(before_max) / _DAY_MS:g} days "
            f"(message.timestamp.before.max.ms={before_max})"
        )
    if problems:
        msg = (
            f"refusing to load into {topic}: {'; '.join(problems)}. Use a new topic (created "
            f"with retention.ms=-1) or alter this one, e.g. kafka-configs.sh --alter --topic "
            f"{topic} --add-config retention.ms=-1"
        )
        raise LoadError(msg)
    return f"{topic} exists and keeps history (retention.ms={retention})"


def _by_span(batch: PointBatch, span_ms: int) -> list[PointBatch]:
    """Cut the batch into runs of consecutive points within one span of newest time.

    File order is arrival order: a point written late stays behind the points written before
    it. A run ends where the running newest time enters the next ``span_ms`` bucket.
    """
    if len(batch) == 0:
        return [batch]
    bucket = np.maximum.accumulate(batch.ts_ms) // span_ms
    cuts = np.flatnonzero(np.diff(bucket)) + 1
    if not len(cuts):
        return [batch]
    pos = np.arange(len(batch))
    edges = [0, *cuts.tolist(), len(batch)]
    return [batch.select((pos >= a) & (pos < b)) for a, b in itertools.pairwise(edges)]


def load(
    cfg: FileInput,
    ident: tuple[str, str],
    *,
    bootstrap: str,
    topic: str,
    partitions: int = 1,
    shard_levels: int = 2,
    message_span_s: float = 3600.0,
    max_points: int = 20_000,
    timeout_s: float = 30.0,
) -> dict[str, Any]:
    """Write the file's points to ``topic``; return counts (raises :class:`LoadError`)."""
    first, last = time_span(cfg)
    if first is None or last is None:
        msg = f"{cfg.path}: no points to load"
        raise LoadError(msg)
    admin = _admin(bootstrap, timeout_s)
    topic_note = check_topic(admin, topic, oldest_ms=first, partitions=partitions)
    errors: list[str] = []

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            errors.append(str(err))

    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 20,
            "compression.type": "lz4",
            "message.timeout.ms": int(timeout_s * 1000),
            "log_level": 0,
        }
    )
    points = messages = letters = 0
    span_ms = max(1, int(message_span_s * 1000))
    started = time.monotonic()
    for _pos, items in read_points(cfg, ident):
        for item in items:
            if not isinstance(item, PointBatch):
                letters += 1
                print(f"edgeflow load: {item.reason}", file=sys.stderr)
                continue
            for part in _by_span(item, span_ms):
                for key, value, newest in encode_messages(
                    part, "binary", shard_levels=shard_levels, max_points=max_points
                ):
                    while True:
                        try:
                            producer.produce(
                                topic, value, key.encode(), timestamp=newest, on_delivery=delivered
                            )
                            break
                        except BufferError:
                            producer.poll(0.1)
                    messages += 1
            points += len(item)
        producer.poll(0)
    left = producer.flush(timeout_s)
    if errors or left:
        msg = (
            f"{topic}: {len(errors) + left} of {messages} messages not written "
            f"({errors[0] if errors else 'flush timed out'})"
        )
        raise LoadError(msg)
    return {
        "topic": topic,
        "topic_note": topic_note,
        "points": points,
        "messages": messages,
        "dead_letters": letters,
        "first": ms_to_iso(first),
        "last": ms_to_iso(last),
        "seconds": round(time.monotonic() - started, 3),
    }


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(prog="edgeflow load", description=__doc__.splitlines()[0])
    p.add_argument("--site", type=Path, required=True, help="site YAML with a file input")
    p.add_argument("--file", type=Path, help="history file (default: the input's path)")
    p.add_argument("--topic", default="edgeflow.raw")
    p.add_argument(
        "--bootstrap",
        default=os.environ.get("EDGEFLOW_KAFKA_BOOTSTRAP", "127.0.0.1:19092"),
        help="Kafka bootstrap servers (default: $EDGEFLOW_KAFKA_BOOTSTRAP)",
    )
    p.add_argument("--partitions", type=int, default=1, help="when creating the topic")
    p.add_argument("--message-span-s", type=float, default=3600.0)
    a = p.parse_args(argv)
    if not 0 < a.message_span_s <= 3600:
        # A bounded replay reads one hour of message time past its end (see the source).
        p.error("--message-span-s must be in (0, 3600]")
    try:
        site = load_site(a.site)
        files = [i for i in site.inputs if isinstance(i, FileInput)]
        if not files:
            msg = f"{a.site}: the site has no file input to read the history with"
            raise ConfigError(msg)
        cfg = files[0] if a.file is None else files[0].model_copy(update={"path": str(a.file)})
        done = load(
            cfg,
            (site.site.enterprise, site.site.site),
            bootstrap=a.bootstrap,
            topic=a.topic,
            partitions=a.partitions,
            shard_levels=site.site.shard_levels,
            message_span_s=a.message_span_s,
        )
    except ConfigError as e:
        print(f"edgeflow load: {e}", file=sys.stderr)
        return 2
    except EdgeflowError as e:
        print(f"edgeflow load: {e}", file=sys.stderr)
        return 1
    print(
        f"{done['topic_note']}\nloaded {done['points']:,} points in {done['messages']:,} "
        f"messages ({done['first']} .. {done['last']}) in {done['seconds']:g} s"
    )
    return 0
