"""The custom operator."""

__all__: list[str] = []
