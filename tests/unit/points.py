"""Point batches for table tests: rows of ``(tag, ms after t0, value)``."""

from __future__ import annotations

from wire.records import PointBatch, TagRef


def batch_at(t0: int, rows: list[tuple[TagRef, int, float]]) -> PointBatch:
    """One batch of ``rows`` in the given order (tags in order of first appearance)."""
    tags = tuple(dict.fromkeys(r[0] for r in rows))
    return PointBatch(
        tags,
        [tags.index(r[0]) for r in rows],
        [t0 + r[1] for r in rows],
        [r[2] for r in rows],
        [0] * len(rows),
    )
