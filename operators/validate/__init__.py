"""The validate operator."""

__all__: list[str] = []
