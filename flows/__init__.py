"""Dataflow builders and site configs."""

__all__: list[str] = []
