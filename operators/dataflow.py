"""Thin Bytewax wrappers around the pure operator logic.

Each wrapper is an ``@operator`` taking ``step_id`` first and a keyed stream of
:class:`PointBatch` (key = shard, normally the site) and returns a frozen ``Out`` dataclass
of streams. All state lives in the pure classes, which are snapshotted for recovery.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Stream, operator
from bytewax.operators import KeyedStream, StatefulLogic
from typing_extensions import override

from operators.alarm import AlarmEngine, AlarmRule
from operators.anomaly import AnomalyDetector, AnomalyRule
from operators.batching import Coalescer
from operators.events import Event
from operators.kpi import Kpi
from operators.record import DeadLetter, PointBatch, ms_to_iso, now_ms
from operators.validate import ValidationRules, Validator
from operators.window import TumblingAggregator, WindowAggregates, window_label

__all__ = [
    "AggregateOut",
    "ValidateOut",
    "WindowScoresOut",
    "aggregate",
    "alarms",
    "coalesce",
    "anomalies",
    "late_dead_letters",
    "score_windows",
    "validate",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ValidateOut:
    """Accepted batches (still keyed), rejected points, and stale-tag events."""

    oks: KeyedStream[PointBatch]
    errs: Stream[DeadLetter]
    events: Stream[Event]


def _validate_mapper(rules: ValidationRules, step_id: str) -> Any:
    def mapper(
        state: Validator | None, batch: PointBatch
    ) -> tuple[Validator, Iterable[tuple[str, Any]]]:
        v = state if state is not None else Validator(rules, stage=step_id)
        res = v.process(batch)
        out: list[tuple[str, Any]] = []
        if len(res.ok):
            out.append(("ok", res.ok))
        out.extend(("err", d) for d in res.rejected)
        out.extend(
            (
                "event",
                Event(
                    kind="stale",
                    rule=f"{step_id}.stale",
                    path=ref.path,
                    ts_ms=ts,
                    severity="warning",
                    state="raised",
                    message=f"value unchanged for {rules.stale_after_ms} ms",
                ),
            )
            for ref, ts in res.newly_stale
        )
        return v, out

    return mapper


@operator
def validate(step_id: str, up: KeyedStream[PointBatch], rules: ValidationRules) -> ValidateOut:
    """Validate batches; rejected points leave as dead letters with the reason."""
    tagged = op.stateful_flat_map("check", up, _validate_mapper(rules, step_id))
    oks = op.filter_map("oks", tagged, lambda kv: (kv[0], kv[1][1]) if kv[1][0] == "ok" else None)
    errs = op.filter_map("errs", tagged, lambda kv: kv[1][1] if kv[1][0] == "err" else None)
    events = op.filter_map("events", tagged, lambda kv: kv[1][1] if kv[1][0] == "event" else None)
    return ValidateOut(oks, errs, events)


class _CoalesceLogic(StatefulLogic[PointBatch, PointBatch, Coalescer]):
    def __init__(self, state: Coalescer) -> None:
        self.state = state

    @override
    def on_item(self, value: PointBatch) -> tuple[Iterable[PointBatch], bool]:
        return self.state.add(value, now_ms()), StatefulLogic.RETAIN

    @override
    def on_notify(self) -> tuple[Iterable[PointBatch], bool]:
        return self.state.poll(now_ms()), StatefulLogic.RETAIN

    @override
    def on_eof(self) -> tuple[Iterable[PointBatch], bool]:
        return self.state.take(), StatefulLogic.RETAIN

    @override
    def notify_at(self) -> datetime | None:
        due = self.state.due_ms()
        return None if due is None else datetime.fromtimestamp(due / 1000, tz=UTC)

    @override
    def snapshot(self) -> Coalescer:
        return copy.deepcopy(self.state)


@operator
def coalesce(
    step_id: str, up: KeyedStream[PointBatch], *, max_points: int, max_delay_ms: int
) -> KeyedStream[PointBatch]:
    """Merge consecutive small batches (per key) into larger ones; see :mod:`operators.batching`."""
    Coalescer(max_points=max_points, max_delay_ms=max_delay_ms)

    def builder(resume: Coalescer | None) -> _CoalesceLogic:
        return _CoalesceLogic(resume or Coalescer(max_points=max_points, max_delay_ms=max_delay_ms))

    return op.stateful("merge", up, builder)


@dataclass(frozen=True)
class AggregateOut:
    """Closed windows (all sizes) and points that arrived after their window closed."""

    aggregates: Stream[WindowAggregates]
    late: Stream[PointBatch]


class _AggLogic(StatefulLogic[PointBatch, tuple[str, Any], TumblingAggregator]):
    def __init__(self, agg: TumblingAggregator, step_id: str) -> None:
        self.agg = agg
        self.step_id = step_id

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
) -> AggregateOut:
    """Event-time tumbling-window aggregates per tag; see :mod:`operators.window`."""
    # Fail at build time, not on the first item, when parameters are wrong.
    TumblingAggregator(
        window_ms=window_ms,
        rollup_ms=rollup_ms,
        allowed_lateness_ms=allowed_lateness_ms,
        idle_close=idle_close,
        reopen_horizon_ms=reopen_horizon_ms,
    )

    def builder(resume: TumblingAggregator | None) -> _AggLogic:
        agg = resume or TumblingAggregator(
            window_ms=window_ms,
            rollup_ms=rollup_ms,
            allowed_lateness_ms=allowed_lateness_ms,
            idle_close=idle_close,
            reopen_horizon_ms=reopen_horizon_ms,
        )
        return _AggLogic(agg, step_id)

    tagged = op.stateful("windows", up, builder)
    aggs = op.filter_map("aggs", tagged, lambda kv: kv[1][1] if kv[1][0] == "agg" else None)
    late = op.filter_map("late", tagged, lambda kv: kv[1][1] if kv[1][0] == "late" else None)
    return AggregateOut(aggs, late)


def late_dead_letters(batch: PointBatch, *, stage: str, window_ms: int) -> list[DeadLetter]:
    """Turn late points into dead letters that say which closed window they missed."""
    label = window_label(window_ms)
    expired = batch.extra.get("expired")
    out = []
    for i, p in enumerate(batch.to_points()):
        start = ms_to_iso(p.ts_ms - p.ts_ms % window_ms)
        if expired is not None and expired[i]:
            why = f"late: {label} window starting {start} is past the reopen horizon"
        else:
            why = f"late: {label} window starting {start} is closed for this tag"
        out.append(DeadLetter(stage, why, p.to_dict(), source=p.source))
    return out


def _site_of_window(w: WindowAggregates) -> str:
    return w.tags[0].path.split("/", 2)[1] if w.tags else "_"


def _batch_events(step_id: str, up: KeyedStream[PointBatch], factory: Any) -> Stream[Event]:
    def mapper(state: Any, batch: PointBatch) -> tuple[Any, list[Event]]:
        engine = state if state is not None else factory()
        return engine, engine.process(batch)

    return op.key_rm("unkey", op.stateful_flat_map("eval", up, mapper))


@operator
def anomalies(
    step_id: str, up: KeyedStream[PointBatch], rules: tuple[AnomalyRule, ...]
) -> Stream[Event]:
    """Anomaly-window rules per tag; emits raised/cleared events."""
    AnomalyDetector(rules)  # validate now, not on the first item
    return _batch_events(step_id, up, lambda: AnomalyDetector(rules))


@operator
def alarms(
    step_id: str, up: KeyedStream[PointBatch], rules: tuple[AlarmRule, ...]
) -> Stream[Event]:
    """Threshold alarms with hysteresis; emits raised/cleared events."""
    AlarmEngine(rules)
    return _batch_events(step_id, up, lambda: AlarmEngine(rules))


@dataclass(frozen=True)
class WindowScoresOut:
    """KPI/score values and the events derived from them."""

    kpis: Stream[Kpi]
    events: Stream[Event]


@operator
def score_windows(step_id: str, up: Stream[WindowAggregates], factory: Any) -> WindowScoresOut:
    """Run a per-site window processor (KPIs, ONNX scoring) over closed windows.

    ``factory()`` builds an object whose ``process(window)`` returns ``(kpis, events)``.
    """
    keyed = op.key_on("site", up, _site_of_window)

    def mapper(state: Any, w: WindowAggregates) -> tuple[Any, list[tuple[str, Any]]]:
        engine = state if state is not None else factory()
        kpis, events = engine.process(w)
        return engine, [("kpi", k) for k in kpis] + [("event", e) for e in events]

    tagged = op.stateful_flat_map("eval", keyed, mapper)
    kpis = op.filter_map("kpis", tagged, lambda kv: kv[1][1] if kv[1][0] == "kpi" else None)
    events = op.filter_map("events", tagged, lambda kv: kv[1][1] if kv[1][0] == "event" else None)
    return WindowScoresOut(kpis, events)
