"""The inference operator."""

__all__: list[str] = []
