"""Bytewax wrappers of validation and coalescing (keyed by shard)."""

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
from operators.validate.coalesce import Coalescer
from operators.validate.config import ValidateOp
from operators.validate.logic import Validator
from wire.records import DeadLetter, Event, PointBatch, now_ms

__all__ = ["ValidateOut", "coalesce", "validate"]


@dataclass(frozen=True)
class ValidateOut:
    """Accepted batches (still keyed), rejected points, and stale-tag events."""

    oks: KeyedStream[PointBatch]
    errs: Stream[DeadLetter]
    events: Stream[Event]


def _validate_mapper(rules: ValidateOp, step_id: str, location: tuple[float, float] | None) -> Any:
    def mapper(
        state: Validator | None, batch: PointBatch
    ) -> tuple[Validator, Iterable[tuple[str, Any]]]:
        v = state if state is not None else Validator(rules, stage=step_id, location=location)
        res = v.process(batch)
        out: list[tuple[str, Any]] = []
        if len(res.ok):
            out.append(("ok", res.ok))
        out.extend(("err", d) for d in res.rejected)
        changes = [(ref, ts, "raised") for ref, ts in res.newly_stale]
        changes += [(ref, ts, "cleared") for ref, ts in res.stale_cleared]
        out.extend(
            (
                "event",
                Event(
                    kind="stale",
                    rule=f"{step_id}.stale",
                    path=ref.path,
                    ts_ms=ts,
                    severity="warning",
                    state=state,
                    message=(
                        f"value unchanged for {rules.stale_after_ms} ms"
                        if state == "raised"
                        else "value changes again"
                    ),
                ),
            )
            for ref, ts, state in sorted(changes, key=lambda c: (c[1], c[0].path, c[2]))
        )
        return v, out

    return mapper


@operator
def validate(
    step_id: str,
    up: KeyedStream[PointBatch],
    rules: ValidateOp,
    *,
    location: tuple[float, float] | None = None,
) -> ValidateOut:
    """Validate batches; rejected points leave as dead letters with the reason.

    ``location`` (latitude, longitude) is the site's place, for stale detection gated on the sun.
    """
    Validator(rules, stage=step_id, location=location)  # fail at build time on bad rules
    tagged = op.stateful_flat_map("check", up, _validate_mapper(rules, step_id, location))
    oks = op.filter_map("oks", tagged, lambda kv: (kv[0], kv[1][1]) if kv[1][0] == "ok" else None)
    return ValidateOut(oks, pick("errs", tagged, "err"), pick("events", tagged, "event"))


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
    """Merge consecutive small batches (per key) into larger ones; see :mod:`.coalesce`."""
    Coalescer(max_points=max_points, max_delay_ms=max_delay_ms)

    def builder(resume: Coalescer | None) -> _CoalesceLogic:
        return _CoalesceLogic(resume or Coalescer(max_points=max_points, max_delay_ms=max_delay_ms))

    return op.stateful("merge", up, builder)
