"""The built-in stream kinds: the record each carries and how it becomes rows.

Sinks turn any stream into rows with :func:`rows_of`; a component that adds a new kind of
stream registers it the same way.
"""

from __future__ import annotations

from typing import Any

from flows.registry import register_stream, stream_kind
from wire.records import (
    POINT_FLAGS,
    DeadLetter,
    Event,
    Kpi,
    PointBatch,
    TextPoints,
    WindowAggregates,
)

__all__ = ["rows_of"]


def _point_rows(batch: PointBatch) -> list[dict[str, Any]]:
    rows = [p.to_dict() for p in batch.to_points()]
    for flag in POINT_FLAGS:  # only set flags appear: rows stay as they were otherwise
        marks = batch.extra.get(flag)
        if marks is not None:
            for row, on in zip(rows, marks.tolist(), strict=True):
                if on:
                    row[flag] = True
    return rows


def _one(item: Any) -> list[dict[str, Any]]:
    return [item.to_dict()]


def _window_rows(w: WindowAggregates) -> list[dict[str, Any]]:
    return w.rows()


register_stream("raw", PointBatch, _point_rows, "what the inputs produced, before any operator")
register_stream("points", PointBatch, _point_rows, "points after the point-transforming operators")
register_stream("texts", TextPoints, TextPoints.rows, "text-valued samples (modes, states)")
register_stream("aggregates", WindowAggregates, _window_rows, "closed-window statistics per tag")
register_stream("kpis", Kpi, _one, "KPI values per window")
register_stream("events", Event, _one, "anomalies, alarms, stale tags, source state changes")
register_stream("late", DeadLetter, _one, "points that arrived after their window closed")
register_stream("dead_letters", DeadLetter, _one, "rejected input, with the reason")


def rows_of(stream: str, item: Any) -> list[dict[str, Any]]:
    """Flatten one item of ``stream`` into JSON-friendly rows."""
    kind = stream_kind(stream)
    if not isinstance(item, kind.record):
        msg = f"stream {stream} carries {type(item).__name__}, expected {kind.record.__name__}"
        raise TypeError(msg)
    return kind.rows(item)
