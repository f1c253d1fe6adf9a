"""Kafka: the raw-topic input and the sink for every stream."""

__all__: list[str] = []
