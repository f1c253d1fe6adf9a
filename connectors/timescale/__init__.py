"""The timescale sink."""

__all__: list[str] = []
