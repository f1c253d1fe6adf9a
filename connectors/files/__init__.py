"""The files sink."""

__all__: list[str] = []
