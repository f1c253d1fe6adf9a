"""The console sink."""

__all__: list[str] = []
