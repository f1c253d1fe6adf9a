"""The aggregate operator."""

__all__: list[str] = []
