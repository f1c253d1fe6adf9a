"""Modbus TCP / RTU-over-TCP polling input."""

__all__: list[str] = []
