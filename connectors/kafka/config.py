"""Configuration of the Kafka input and sink."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from connectors._spool_options import SpoolOptions
from flows.logs import reveal
from flows.registry import History, InputModel, SinkModel, StreamName
from wire.records import ms_to_datetime

__all__ = ["KafkaConnection", "KafkaInput", "KafkaSinkConfig"]


class KafkaConnection(BaseModel):
    """Broker address plus librdkafka settings passed through (SASL/TLS).

    Secrets go in ``sasl_password`` (kept masked until the client is created), never in
    ``config``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    bootstrap_servers: str = Field(min_length=1)
    config: dict[str, str] = Field(
        default_factory=dict, description="e.g. security.protocol, sasl.mechanism, ssl.ca.location"
    )
    sasl_password: SecretStr | None = None

    @field_validator("config")
    @classmethod
    def _no_secrets(cls, v: dict[str, str]) -> dict[str, str]:
        for key in v:
            if "password" in key or "secret" in key:
                msg = f"put {key} in sasl_password (a masked secret), not in config"
                raise ValueError(msg)
        return v

    def client_config(self) -> dict[str, str]:
        """Return the librdkafka settings, secrets included (only for creating a client)."""
        cfg = {"bootstrap.servers": self.bootstrap_servers, **self.config}
        if self.sasl_password is not None:
            cfg["sasl.password"] = reveal(self.sasl_password)
        return cfg


class KafkaInput(InputModel):
    """Point batches from a raw topic (an edge flow's kafka sink or ``edgeflow load``)."""

    type: Literal["kafka"]
    id: str = "kafka"
    kafka: KafkaConnection
    topic: str = "edgeflow.raw"
    start: Literal["earliest", "latest"] = "earliest"
    start_time: datetime | None = Field(default=None, description="seek by time (aware)")
    end_time: datetime | None = Field(default=None, description="bounded replay: stop here")
    bounded: bool = Field(
        default=False, description="stop at the topic's end offsets as of start (replays)"
    )
    partitions: tuple[int, ...] | None = Field(
        default=None,
        description="read only these Kafka partitions (several processors on disjoint sets)",
    )
    batch_size: int = Field(
        default=5000, gt=0, description="at most this many messages per batch of a partition"
    )
    batch_max_bytes: int = Field(
        default=2 << 20,
        gt=0,
        description=(
            "stop a partition's batch once its messages hold this many bytes (one message "
            "at least): decoded batches in flight, hence memory, stay bounded"
        ),
    )
    connect_timeout_s: float = Field(default=10.0, gt=0)

    def history(self) -> History:
        """Return the point times the topic still holds (reads its first and last messages)."""
        from connectors.kafka.source import topic_history

        return topic_history(self)

    def for_replay(self, start_ms: int, end_ms: int) -> KafkaInput:
        """Read the messages of ``[start_ms, end_ms)`` and stop."""
        return self.model_copy(
            update={"start_time": ms_to_datetime(start_ms), "end_time": ms_to_datetime(end_ms)}
        )

    @field_validator("start_time", "end_time")
    @classmethod
    def _aware(cls, v: datetime | None) -> datetime | None:
        if v is not None and v.tzinfo is None:
            msg = "must include a timezone, e.g. 2026-01-01T00:00:00Z"
            raise ValueError(msg)
        return v


class KafkaSinkConfig(SinkModel, SpoolOptions):
    """Streams to Kafka topics through a durable local spool (store-and-forward).

    Point streams are one message per shard and batch (key: the shard, so a shard stays in one
    partition), in the compact binary encoding by default; other streams are JSON rows.
    """

    type: Literal["kafka"]
    id: str = "kafka"
    kafka: KafkaConnection
    topics: dict[StreamName, str] = Field(
        default_factory=lambda: {
            "raw": "edgeflow.raw",
            "aggregates": "edgeflow.aggregates",
            "events": "edgeflow.events",
            "dead_letters": "edgeflow.dead_letters",
        }
    )
    encoding: Literal["binary", "json"] = "binary"
    delivery_timeout_s: float = Field(default=30.0, gt=0)
    max_points_per_message: int = Field(default=20_000, gt=0, le=1_000_000)
    sink_partitions: int = Field(
        default=1, ge=1, le=64, description="parallel spools/producers (keys are split by hash)"
    )
