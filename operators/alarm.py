"""Threshold alarms with hysteresis: one ``raised`` and one ``cleared`` event per episode.

A high alarm raises when the value goes above ``limit`` and clears only when it falls to
``limit - deadband`` or below; a low alarm mirrors that. Between the two thresholds the
alarm keeps its state, so a value hovering at the limit cannot produce an alarm storm.
Points are evaluated per tag in time order; the state is kept across batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from operators.errors import RuleError
from operators.events import Event
from operators.record import PointBatch, TagRef
from operators.validate import tag_matches

__all__ = ["AlarmEngine", "AlarmRule", "hysteresis"]


@dataclass(frozen=True, slots=True)
class AlarmRule:
    """``direction`` high: raise above ``limit``, clear at ``limit - deadband`` (low: mirror)."""

    id: str
    tags: str
    limit: float
    deadband: float = 0.0
    direction: Literal["high", "low"] = "high"
    severity: str = "major"

    def __post_init__(self) -> None:
        if self.deadband < 0:
            msg = f"alarm {self.id}: deadband must be >= 0"
            raise RuleError(msg)

    @property
    def clear_at(self) -> float:
        """The value at (or beyond) which a raised alarm clears."""
        return (
            self.limit - self.deadband if self.direction == "high" else self.limit + self.deadband
        )


def hysteresis(
    values: npt.NDArray[np.float64],
    segment_start: npt.NDArray[np.bool_],
    initial: npt.NDArray[np.bool_],
    *,
    set_mask: npt.NDArray[np.bool_],
    reset_mask: npt.NDArray[np.bool_],
) -> npt.NDArray[np.bool_]:
    """Latch state per point: true after a set, false after a reset, else unchanged.

    Runs are delimited by ``segment_start``; ``initial`` is the state before each run (one
    entry per run). A point that is both set and reset counts as set.
    """
    n = len(values)
    idx = np.arange(n)
    decided = set_mask | reset_mask
    last = np.where(decided, idx, -1)
    seg = np.cumsum(segment_start) - 1
    starts = np.flatnonzero(segment_start)
    # Forward-fill the last deciding index within each run.
    lifted = np.where(last >= 0, last, -1) + (seg.astype(np.int64) * (n + 1))
    filled = np.maximum.accumulate(lifted) - seg.astype(np.int64) * (n + 1)
    has = filled >= starts[seg]
    state = np.where(has, set_mask[np.clip(filled, 0, n - 1)], initial[seg])
    return np.asarray(state, np.bool_)


class AlarmEngine:
    """Evaluates alarm rules over batches and remembers which (rule, tag) are raised."""

    def __init__(self, rules: tuple[AlarmRule, ...]) -> None:
        ids = [r.id for r in rules]
        if len(set(ids)) != len(ids):
            msg = f"alarm rule ids must be unique: {ids}"
            raise RuleError(msg)
        self.rules = rules
        self._raised: dict[str, set[str]] = {r.id: set() for r in rules}
        self._match: dict[str, dict[TagRef, bool]] = {r.id: {} for r in rules}

    def active(self) -> dict[str, set[str]]:
        """Return raised alarms: rule id -> tag paths."""
        return {k: set(v) for k, v in self._raised.items() if v}

    def process(self, batch: PointBatch) -> list[Event]:
        """Return raise/clear events caused by this batch, in time order."""
        events: list[Event] = []
        for rule in self.rules:
            events.extend(self._run(rule, batch))
        events.sort(key=lambda e: (e.ts_ms, e.rule, e.path))
        return events

    def _run(self, rule: AlarmRule, batch: PointBatch) -> list[Event]:
        cache = self._match[rule.id]
        ok = np.fromiter(
            (cache.setdefault(t, tag_matches(rule.tags, t)) for t in batch.tags),
            np.bool_,
            len(batch.tags),
        )
        sel = ok[batch.tag_idx] if len(batch) else np.zeros(0, np.bool_)
        if not sel.any():
            return []
        tag_idx = batch.tag_idx[sel]
        ts = batch.ts_ms[sel]
        v = batch.value[sel]
        order = np.lexsort((ts, tag_idx))
        t_i, ts, v = tag_idx[order], ts[order], v[order]
        start = np.r_[True, t_i[1:] != t_i[:-1]]
        raised = self._raised[rule.id]
        paths = [batch.tags[int(i)].path for i in t_i[start].tolist()]
        initial = np.array([p in raised for p in paths], np.bool_)
        if rule.direction == "high":
            set_mask, reset_mask = v > rule.limit, v <= rule.clear_at
        else:
            set_mask, reset_mask = v < rule.limit, v >= rule.clear_at
        state = hysteresis(v, start, initial, set_mask=set_mask, reset_mask=reset_mask)
        prev = np.r_[False, state[:-1]]
        prev[start] = initial
        events = []
        seg = np.cumsum(start) - 1
        for k in np.flatnonzero(state != prev).tolist():
            path = paths[int(seg[k])]
            up = bool(state[k])
            (raised.add if up else raised.discard)(path)
            unit = batch.tags[int(t_i[k])].unit
            verb = "above" if rule.direction == "high" else "below"
            message = (
                f"{v[k]:g} {unit} is {verb} the limit {rule.limit:g} {unit}"
                if up
                else f"back to {v[k]:g} {unit} (clears at {rule.clear_at:g} {unit})"
            )
            events.append(
                Event(
                    kind="alarm",
                    rule=rule.id,
                    path=path,
                    ts_ms=int(ts[k]),
                    severity=rule.severity,
                    state="raised" if up else "cleared",
                    message=message,
                    details={
                        "value": float(v[k]),
                        "limit": rule.limit,
                        "clear_at": rule.clear_at,
                        "direction": rule.direction,
                        "unit": unit,
                    },
                )
            )
        return events
