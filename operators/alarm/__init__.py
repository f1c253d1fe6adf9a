"""The alarm operator."""

__all__: list[str] = []
