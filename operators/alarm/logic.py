"""Threshold alarms with hysteresis: one ``raised`` and one ``cleared`` event per episode.

A high alarm raises when the value goes above ``limit`` and clears only when it falls to
``limit - deadband`` or below; a low alarm mirrors that. Between the two thresholds the
alarm keeps its state, so a value hovering at the limit cannot produce an alarm storm.
Points are evaluated per tag in arrival order; a point not newer than every earlier point of
its tag is skipped (counted in ``skipped``), so the events are the same for any batching and
any interleaving of sources. The state is kept across batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Literal

import numpy as np
import numpy.typing as npt
from pydantic import ConfigDict

from operators._state import PickleCopy, TableCache, TagRegistry, tag_matches, tag_order
from operators.errors import RuleError
from wire.records import Event, PointBatch, TagRef

__all__ = ["AlarmEngine", "AlarmRule", "hysteresis"]


@dataclass(frozen=True, slots=True)
class AlarmRule:
    """``direction`` high: raise above ``limit``, clear at ``limit - deadband`` (low: mirror)."""

    __pydantic_config__ = ConfigDict(extra="forbid")

    id: str
    tags: str
    limit: float
    deadband: float = 0.0
    direction: Literal["high", "low"] = "high"
    severity: Literal["critical", "major", "minor", "warning", "info"] = "major"

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


class AlarmEngine(PickleCopy):
    """Evaluates alarm rules over batches and remembers which (rule, tag) are raised."""

    def __init__(self, rules: tuple[AlarmRule, ...]) -> None:
        ids = [r.id for r in rules]
        if len(set(ids)) != len(ids):
            msg = f"alarm rule ids must be unique: {ids}"
            raise RuleError(msg)
        self.rules = rules
        self._reg = TagRegistry()
        self._raised: dict[str, npt.NDArray[np.bool_]] = {
            r.id: np.zeros(0, np.bool_) for r in rules
        }
        self._newest: dict[str, npt.NDArray[np.int64]] = {
            r.id: np.empty(0, np.int64) for r in rules
        }
        self.skipped: dict[str, int] = {}
        self._luts: dict[str, TableCache[npt.NDArray[np.int64]]] = {
            r.id: TableCache(partial(self._rule_lut, r)) for r in rules
        }

    def _rule_lut(self, rule: AlarmRule, tags: tuple[TagRef, ...]) -> npt.NDArray[np.int64]:
        lut = np.full(len(tags), -1, np.int64)
        for i, ref in enumerate(tags):
            if tag_matches(rule.tags, ref):
                lut[i] = self._reg.id(ref)
        return lut

    def active(self) -> dict[str, set[str]]:
        """Return raised alarms: rule id -> tag paths."""
        out = {}
        for rule_id, raised in self._raised.items():
            paths = {self._reg[g].path for g in np.flatnonzero(raised).tolist()}
            if paths:
                out[rule_id] = paths
        return out

    def process(self, batch: PointBatch) -> list[Event]:
        """Return raise/clear events caused by this batch, in time order."""
        events: list[Event] = []
        if not len(batch):
            return events
        for rule in self.rules:
            events.extend(self._run(rule, batch))
        events.sort(key=lambda e: (e.ts_ms, e.rule, e.path))
        return events

    def _run(self, rule: AlarmRule, batch: PointBatch) -> list[Event]:
        gid_all = self._luts[rule.id].get(batch.tags)[batch.tag_idx]
        sel = gid_all >= 0
        live = batch.live()
        if live is not None:
            sel &= live
        if not sel.any():
            return []
        raised = self._raised[rule.id]
        if len(raised) < len(self._reg):
            raised = self._raised[rule.id] = np.r_[
                raised, np.zeros(len(self._reg) - len(raised), np.bool_)
            ]
        newest = self._newest[rule.id]
        if len(newest) < len(self._reg):
            newest = self._newest[rule.id] = np.r_[
                newest, np.full(len(self._reg) - len(newest), -1, np.int64)
            ]
        # Per tag in arrival order: a point not newer than every earlier point of its tag is
        # skipped (counted), so the alarm state never depends on how points were batched.
        o = tag_order(gid_all[sel], batch.ts_ms[sel], newest)
        fresh = o.ts > o.before
        if not fresh.all():
            self.skipped[rule.id] = self.skipped.get(rule.id, 0) + int((~fresh).sum())
        gid, ts, v = o.gid[fresh], o.ts[fresh], batch.value[sel][o.order][fresh]
        if not len(gid):
            return []
        start = np.r_[True, gid[1:] != gid[:-1]]
        initial = raised[gid[start]]
        if rule.direction == "high":
            set_mask, reset_mask = v > rule.limit, v <= rule.clear_at
        else:
            set_mask, reset_mask = v < rule.limit, v >= rule.clear_at
        state = hysteresis(v, start, initial, set_mask=set_mask, reset_mask=reset_mask)
        ends = np.r_[np.flatnonzero(start)[1:], len(gid)] - 1
        raised[gid[ends]] = state[ends]
        newest[gid[ends]] = ts[ends]
        prev = np.r_[False, state[:-1]]
        prev[start] = initial
        events = []
        for k in np.flatnonzero(state != prev).tolist():
            ref = self._reg[int(gid[k])]
            up = bool(state[k])
            unit = ref.unit
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
                    path=ref.path,
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
