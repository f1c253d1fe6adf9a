"""Shared helpers of the Bytewax wrappers: per-shard engines and tagged-output splitting."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Stream, operator
from bytewax.operators import KeyedStream

from operators._state import WindowSequencer
from wire.records import Event, Kpi, WindowAggregates, shard_of

__all__ = ["WindowScoresOut", "engine_flat_map", "pick", "score_windows", "shard_of_window"]


def engine_flat_map(
    step_id: str, up: KeyedStream[Any], factory: Callable[[], Any]
) -> KeyedStream[Any]:
    """Run ``factory().process(item) -> list`` per key; the engine is the snapshotted state."""

    def mapper(state: Any, item: Any) -> tuple[Any, list[Any]]:
        engine = state if state is not None else factory()
        return engine, engine.process(item)

    return op.stateful_flat_map(step_id, up, mapper)


def pick(step_id: str, tagged: KeyedStream[tuple[str, Any]], tag: str) -> Stream[Any]:
    """Unkeyed items of ``tagged`` whose tag is ``tag`` (``(key, (tag, item))`` pairs)."""
    return op.filter_map(step_id, tagged, lambda kv: kv[1][1] if kv[1][0] == tag else None)


@dataclass(frozen=True)
class WindowScoresOut:
    """KPI/score values and the events derived from them."""

    kpis: Stream[Kpi]
    events: Stream[Event]


def shard_of_window(w: WindowAggregates, levels: int) -> str:
    """Return the shard of a window: the first ``levels`` path levels of its tags.

    The aggregator closes windows per shard, so every tag of a window shares this prefix.
    """
    return shard_of(w.tags[0].path, levels) if w.tags else "_"


@operator
def score_windows(
    step_id: str, up: Stream[WindowAggregates], factory: Callable[[], Any], *, levels: int = 2
) -> WindowScoresOut:
    """Run a per-shard window engine (KPIs, ONNX scoring) over closed windows.

    ``factory()`` builds a :class:`~operators._state.WindowEngine`, driven by a
    :class:`~operators._state.WindowSequencer`: per-window results at once, events and running
    totals on final windows in window order. Its state (e.g. cumulative energy) belongs to the
    window's shard, never to another site.
    """
    keyed = op.key_on("shard", up, lambda w: shard_of_window(w, levels))

    def mapper(state: Any, w: WindowAggregates) -> tuple[Any, list[tuple[str, Any]]]:
        engine = state if state is not None else WindowSequencer(factory())
        kpis, events = engine.process(w)
        return engine, [("kpi", k) for k in kpis] + [("event", e) for e in events]

    tagged = op.stateful_flat_map("eval", keyed, mapper)
    return WindowScoresOut(pick("kpis", tagged, "kpi"), pick("events", tagged, "event"))
