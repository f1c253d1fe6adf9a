"""Bytewax wrapper of the event-time window aggregator (keyed by shard)."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Stream, operator
from bytewax.operators import KeyedStream, StatefulLogic
from typing_extensions import override

from operators._flow import pick
from operators.aggregate.logic import TumblingAggregator
from wire.records import DeadLetter, PointBatch, WindowAggregates, ms_to_iso, now_ms, window_label

__all__ = ["AggregateOut", "aggregate", "late_dead_letters"]


@dataclass(frozen=True)
class AggregateOut:
    """Closed windows (all sizes) and points that arrived after their window closed."""

    aggregates: Stream[WindowAggregates]
    late: Stream[PointBatch]


class _AggLogic(StatefulLogic[PointBatch, tuple[str, Any], TumblingAggregator]):
    def __init__(self, agg: TumblingAggregator) -> None:
        self.agg = agg

    def _emit(
        self, windows: list[WindowAggregates], late: PointBatch | None = None
    ) -> list[tuple[str, Any]]:
        out: list[tuple[str, Any]] = [("agg", w) for w in windows]
        if late is not None and len(late):
            out.append(("late", late))
        return out

    @override
    def on_item(self, value: PointBatch) -> tuple[Iterable[tuple[str, Any]], bool]:
        windows, late = self.agg.add(value, now_ms())
        return self._emit(windows, late), StatefulLogic.RETAIN

    @override
    def on_notify(self) -> tuple[Iterable[tuple[str, Any]], bool]:
        return self._emit(self.agg.advance(now_ms())), StatefulLogic.RETAIN

    @override
    def on_eof(self) -> tuple[Iterable[tuple[str, Any]], bool]:
        return self._emit(self.agg.flush()), StatefulLogic.RETAIN

    @override
    def notify_at(self) -> datetime | None:
        wall = self.agg.next_close_wall_ms()
        if wall is None:
            return None
        return datetime.fromtimestamp(max(wall, now_ms() + 50) / 1000, tz=UTC)

    @override
    def snapshot(self) -> TumblingAggregator:
        return copy.deepcopy(self.agg)


@operator
def aggregate(
    step_id: str,
    up: KeyedStream[PointBatch],
    *,
    window_ms: int = 60_000,
    rollup_ms: tuple[int, ...] = (900_000,),
    allowed_lateness_ms: int = 0,
    idle_close: bool = True,
    reopen_horizon_ms: int | None = None,
    zone: str = "UTC",
    max_gap_ms: int | None = None,
    max_source_lag_ms: int = 300_000,
) -> AggregateOut:
    """Event-time tumbling-window aggregates per tag; see :mod:`operators.aggregate.logic`."""
    params: dict[str, Any] = {
        "window_ms": window_ms,
        "rollup_ms": rollup_ms,
        "allowed_lateness_ms": allowed_lateness_ms,
        "idle_close": idle_close,
        "reopen_horizon_ms": reopen_horizon_ms,
        "zone": zone,
        "max_gap_ms": max_gap_ms,
        "max_source_lag_ms": max_source_lag_ms,
        # Windows closed together travel as one block: a replay closes thousands per batch.
        "blocks": True,
    }
    TumblingAggregator(**params)  # fail at build time, not on the first item

    def builder(resume: TumblingAggregator | None) -> _AggLogic:
        return _AggLogic(resume or TumblingAggregator(**params))

    tagged = op.stateful("windows", up, builder)
    return AggregateOut(pick("aggs", tagged, "agg"), pick("late", tagged, "late"))


def late_dead_letters(batch: PointBatch, *, stage: str, window_ms: int) -> list[DeadLetter]:
    """Turn late points into dead letters that say which closed window they missed."""
    label = window_label(window_ms)
    out = []
    for p in batch.to_points():
        start = ms_to_iso(p.ts_ms - p.ts_ms % window_ms)
        why = f"late: {label} window starting {start} is closed for this tag"
        out.append(DeadLetter(stage, why, p.to_dict(), source=p.source))
    return out
