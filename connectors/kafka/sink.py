"""Kafka sink with the guarantees Bytewax's own connector lacks.

:class:`KafkaSink` produces with an idempotent producer (``acks=all``) and collects delivery
  reports; at every epoch snapshot (and at close) it waits until everything produced is
  acknowledged, so a snapshot never covers unconfirmed messages. A failed or unconfirmed
  delivery raises :class:`SinkError` (the flow stops loudly and resumes from its last
  snapshot: at-least-once, and sinks upsert). Waiting per epoch instead of per batch keeps
  the broker round trip off the hot path.
Security settings (``security.protocol``, ``sasl.*``, ``ssl.*``) pass through unchanged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
from confluent_kafka import KafkaError, Producer
from typing_extensions import override

from connectors.errors import SinkError
from connectors.kafka.config import KafkaConnection

__all__ = ["KafkaMessage", "KafkaSink"]

log = logging.getLogger(__name__)

KafkaMessage = tuple[str, bytes, int | None]
"""(key, value, timestamp ms or None) as produced by :class:`KafkaSink`."""


class _SinkPartition(StatefulSinkPartition[KafkaMessage, None]):
    def __init__(self, sink: KafkaSink) -> None:
        self.sink = sink
        conf = {
            **sink.connection.client_config(),
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "compression.type": "lz4",
            "message.timeout.ms": int(sink.delivery_timeout_s * 1000),
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
                f"Kafka delivery to {self.sink.topic} at {self.sink.connection.bootstrap_servers} "
                f"failed: "
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

    ``connection`` gives the broker and librdkafka settings; its secrets stay masked until
    the producer is created.

    Items arrive keyed (any routing key; one producer partition serves them all).
    """

    topic: str
    connection: KafkaConnection
    content_type: str = "application/json"
    delivery_timeout_s: float = 30.0

    @override
    def list_parts(self) -> list[str]:
        return ["producer"]

    @override
    def part_fn(self, item_key: str) -> int:
        return 0

    @override
    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _SinkPartition:
        return _SinkPartition(self)
