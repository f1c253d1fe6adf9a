"""The anomaly operator."""

__all__: list[str] = []
