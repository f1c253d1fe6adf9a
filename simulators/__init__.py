"""Realistic energy-site simulators."""

__all__: list[str] = []
