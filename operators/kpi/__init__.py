"""The kpi operator."""

__all__: list[str] = []
