"""The data contract every package shares: record types and their wire encodings.

``wire`` is the lowest layer: it imports no other package of the project. Connectors,
simulators, operators and flows all import it; it imports none of them.
"""

__all__: list[str] = []
