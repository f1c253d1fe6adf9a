"""Stream operators: pure, unit-testable logic plus thin Bytewax wrappers."""

__all__: list[str] = []
