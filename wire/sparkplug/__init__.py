"""Sparkplug B: the payload schema, its generated code and the codec."""

__all__: list[str] = []
