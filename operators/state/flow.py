"""Bytewax wrapper of machine states and OEE (keyed by shard)."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass

import bytewax.operators as op
from bytewax.dataflow import Stream, operator
from bytewax.operators import KeyedStream, StatefulLogic
from typing_extensions import override

from operators.state.logic import StateMap, StateTracker
from wire.records import Event, Kpi, PointBatch

__all__ = ["StatesOut", "machine_states"]


@dataclass(frozen=True)
class StatesOut:
    """State episode events and OEE KPI rows."""

    events: Stream[Event]
    kpis: Stream[Kpi]


class _Logic(StatefulLogic[PointBatch, Event | Kpi, StateTracker]):
    def __init__(self, tracker: StateTracker) -> None:
        self.tracker = tracker

    @override
    def on_item(self, value: PointBatch) -> tuple[Iterable[Event | Kpi], bool]:
        return self.tracker.process(value), StatefulLogic.RETAIN

    @override
    def on_eof(self) -> tuple[Iterable[Event | Kpi], bool]:
        return self.tracker.flush(), StatefulLogic.RETAIN

    @override
    def snapshot(self) -> StateTracker:
        return copy.deepcopy(self.tracker)


def _is_event(item: Event | Kpi) -> bool:
    return isinstance(item, Event)


@operator
def machine_states(
    step_id: str, up: KeyedStream[PointBatch], maps: tuple[StateMap, ...]
) -> StatesOut:
    """State episodes and OEE per machine; see :mod:`operators.state.logic`."""
    StateTracker(step_id, maps)  # fail at build time, not on the first item

    def builder(resume: StateTracker | None) -> _Logic:
        return _Logic(resume or StateTracker(step_id, maps))

    items = op.key_rm("unkey", op.stateful("track", up, builder))
    split = op.branch("split", items, _is_event)
    return StatesOut(split.trues, split.falses)  # type: ignore[arg-type]
