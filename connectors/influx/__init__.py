"""The influx sink."""

__all__: list[str] = []
