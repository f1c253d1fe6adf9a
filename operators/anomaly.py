"""Anomaly windows: rules over a per-tag lookback window, evaluated at every point.

For each point ``i`` of a tag at time ``t`` the rule looks at the tag's points in
``(t - lookback_ms, t]`` (including ones from earlier batches) and tests:

- ``drop``: ``(max - v) / |max| >= threshold`` (relative) or ``max - v >= threshold`` (absolute);
- ``spike``: ``v >= factor * min`` with ``min >= min_baseline`` (relative rise);
- ``deviation``: ``|mean - nominal| / |nominal| >= threshold`` (mean over the lookback);
- ``rate``: ``|v - v_oldest| / seconds(t - t_oldest) >= threshold`` once the lookback holds at
  least half a window of data.

Points below ``ignore_below`` take no part (e.g. inverter efficiency reported 0 at night).
A rule raises one event when its condition turns true for a tag and one ``cleared`` event
when it turns false again: no event storms. Evaluation depends only on the points, not on how
they were batched, so a replay gives the same anomalies as the live run.

Everything is columnar: rolling max/min come from a sparse table over the sorted
(tag, time) keys, rolling means from cumulative sums.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

from operators.errors import RuleError
from operators.events import Event
from operators.record import PointBatch, TagRef
from operators.validate import tag_matches

__all__ = ["AnomalyDetector", "AnomalyRule"]

Kind = Literal["drop", "spike", "deviation", "rate"]
_TS_BITS = 42  # epoch ms < 2**42 until 2109; tag ids live above


@dataclass(frozen=True, slots=True)
class AnomalyRule:
    """One anomaly rule; see the module docstring for the semantics of each kind."""

    id: str
    kind: Kind
    tags: str
    lookback_ms: int
    threshold: float = 0.0
    relative: bool = True
    factor: float = 2.0
    min_baseline: float = 1e-9
    nominal: float | None = None
    ignore_below: float | None = None
    severity: str = "warning"

    def __post_init__(self) -> None:
        if self.lookback_ms <= 0:
            msg = f"anomaly rule {self.id}: lookback_ms must be positive"
            raise RuleError(msg)
        if self.kind == "deviation" and not self.nominal:
            msg = f"anomaly rule {self.id}: deviation needs a non-zero nominal"
            raise RuleError(msg)
        if self.kind == "spike" and self.factor <= 1:
            msg = f"anomaly rule {self.id}: spike factor must be > 1"
            raise RuleError(msg)
        if self.kind in ("drop", "deviation", "rate") and self.threshold <= 0:
            msg = f"anomaly rule {self.id}: threshold must be > 0"
            raise RuleError(msg)


def _sparse(values: npt.NDArray[np.float64], fn: np.ufunc) -> list[npt.NDArray[np.float64]]:
    table = [values]
    span = 1
    while span * 2 <= len(values):
        prev = table[-1]
        table.append(fn(prev[:-span], prev[span:]))
        span *= 2
    return table


def _range_query(
    table: list[npt.NDArray[np.float64]],
    lo: npt.NDArray[np.intp],
    hi: npt.NDArray[np.intp],
    fn: np.ufunc,
) -> npt.NDArray[np.float64]:
    """Fn over values[lo..hi] inclusive, for each (lo, hi) pair."""
    length = hi - lo + 1
    level = np.floor(np.log2(length)).astype(np.intp)
    out = np.empty(len(lo), np.float64)
    for k in np.unique(level).tolist():
        sel = level == k
        t = table[k]
        out[sel] = fn(t[lo[sel]], t[hi[sel] - (1 << k) + 1])
    return out


@dataclass(slots=True)
class _History:
    key: npt.NDArray[np.int64] = field(default_factory=lambda: np.empty(0, np.int64))
    value: npt.NDArray[np.float64] = field(default_factory=lambda: np.empty(0, np.float64))


class AnomalyDetector:
    """Evaluates a set of rules over point batches; keeps each tag's lookback history."""

    def __init__(self, rules: tuple[AnomalyRule, ...]) -> None:
        ids = [r.id for r in rules]
        if len(set(ids)) != len(ids):
            msg = f"anomaly rule ids must be unique: {ids}"
            raise RuleError(msg)
        self.rules = rules
        self._tags: list[TagRef] = []
        self._gid_of: dict[TagRef, int] = {}
        self._match: dict[str, dict[TagRef, bool]] = {r.id: {} for r in rules}
        self._hist: dict[str, _History] = {r.id: _History() for r in rules}
        self._active: dict[str, set[int]] = {r.id: set() for r in rules}

    def _gid(self, ref: TagRef) -> int:
        gid = self._gid_of.get(ref)
        if gid is None:
            gid = self._gid_of[ref] = len(self._tags)
            self._tags.append(ref)
        return gid

    def process(self, batch: PointBatch) -> list[Event]:
        """Evaluate all rules on a batch; return raise/clear events in time order."""
        events: list[Event] = []
        if not len(batch):
            return events
        for rule in self.rules:
            events.extend(self._run(rule, batch))
        events.sort(key=lambda e: (e.ts_ms, e.rule, e.path))
        return events

    def _run(self, rule: AnomalyRule, batch: PointBatch) -> list[Event]:
        cache = self._match[rule.id]
        lut = np.full(len(batch.tags), -1, np.int64)
        for i, ref in enumerate(batch.tags):
            m = cache.get(ref)
            if m is None:
                m = cache[ref] = tag_matches(rule.tags, ref)
            if m:
                lut[i] = self._gid(ref)
        gid = lut[batch.tag_idx]
        sel = gid >= 0
        if rule.ignore_below is not None:
            sel &= batch.value >= rule.ignore_below
        if not sel.any():
            return []
        new_key = (gid[sel] << _TS_BITS) | batch.ts_ms[sel]
        new_val = batch.value[sel]
        hist = self._hist[rule.id]
        key = np.concatenate([hist.key, new_key])
        val = np.concatenate([hist.value, new_val])
        is_new = np.r_[np.zeros(len(hist.key), np.bool_), np.ones(len(new_key), np.bool_)]
        order = np.argsort(key, kind="stable")
        key, val, is_new = key[order], val[order], is_new[order]
        g = key >> _TS_BITS
        ts = key & ((1 << _TS_BITS) - 1)
        starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
        seg = np.cumsum(np.r_[True, g[1:] != g[:-1]]) - 1
        hi = np.arange(len(key))
        lo = np.maximum(np.searchsorted(key, key - rule.lookback_ms, side="right"), starts[seg])
        # The condition at every point (old points are re-evaluated only for transitions).
        if rule.kind == "drop":
            mx = _range_query(_sparse(val, np.maximum), lo, hi, np.maximum)
            gap = mx - val
            with np.errstate(divide="ignore", invalid="ignore"):
                score = np.where(np.abs(mx) > 0, gap / np.abs(mx), 0.0) if rule.relative else gap
            cond = score >= rule.threshold
            baseline = mx
        elif rule.kind == "spike":
            mn = _range_query(_sparse(val, np.minimum), lo, hi, np.minimum)
            cond = (mn >= rule.min_baseline) & (val >= rule.factor * mn)
            with np.errstate(divide="ignore", invalid="ignore"):
                score = np.where(mn > 0, val / mn, 0.0)
            baseline = mn
        elif rule.kind == "deviation":
            csum = np.r_[0.0, np.cumsum(val)]
            mean = (csum[hi + 1] - csum[lo]) / (hi - lo + 1)
            assert rule.nominal is not None
            score = np.abs(mean - rule.nominal) / abs(rule.nominal)
            cond = score >= rule.threshold
            baseline = mean
        else:  # rate
            span_ms = (ts - ts[lo]).astype(np.float64)
            with np.errstate(divide="ignore", invalid="ignore"):
                score = np.where(span_ms > 0, np.abs(val - val[lo]) / (span_ms / 1000.0), 0.0)
            cond = (score >= rule.threshold) & (span_ms * 2 >= rule.lookback_ms)
            baseline = val[lo]
        events = self._transitions(rule, g, ts, val, cond, score, baseline, is_new)
        # Keep only what the next batch's lookback can reach.
        newest = np.maximum.reduceat(ts, starts)
        keep = ts > newest[seg] - rule.lookback_ms
        hist.key, hist.value = key[keep], val[keep]
        return events

    def _transitions(
        self,
        rule: AnomalyRule,
        g: npt.NDArray[np.int64],
        ts: npt.NDArray[np.int64],
        val: npt.NDArray[np.float64],
        cond: npt.NDArray[np.bool_],
        score: npt.NDArray[np.float64],
        baseline: npt.NDArray[np.float64],
        is_new: npt.NDArray[np.bool_],
    ) -> list[Event]:
        active = self._active[rule.id]
        events: list[Event] = []
        # Walk only new points; the previous state of a tag is its active flag.
        pos = np.flatnonzero(is_new)
        if not len(pos):
            return events
        gn, cn = g[pos], cond[pos]
        first = np.r_[True, gn[1:] != gn[:-1]]
        prev = np.r_[False, cn[:-1]]
        init = np.fromiter((int(x) in active for x in gn[first].tolist()), np.bool_)
        prev[first] = init
        for k in np.flatnonzero(cn != prev).tolist():
            p = pos[k]
            gid = int(gn[k])
            ref = self._tags[gid]
            raised = bool(cn[k])
            if raised:
                active.add(gid)
            else:
                active.discard(gid)
            events.append(
                Event(
                    kind="anomaly",
                    rule=rule.id,
                    path=ref.path,
                    ts_ms=int(ts[p]),
                    severity=rule.severity,
                    state="raised" if raised else "cleared",
                    message=self._message(rule, float(val[p]), float(baseline[p]), raised),
                    details={
                        "kind": rule.kind,
                        "lookback_ms": rule.lookback_ms,
                        "window_start_ms": int(ts[p]) - rule.lookback_ms,
                        "value": float(val[p]),
                        "baseline": float(baseline[p]),
                        "score": float(score[p]),
                        "threshold": rule.factor if rule.kind == "spike" else rule.threshold,
                        "unit": ref.unit,
                    },
                )
            )
        return events

    @staticmethod
    def _message(rule: AnomalyRule, v: float, base: float, raised: bool) -> str:
        if not raised:
            return f"{rule.kind} condition cleared (value {v:g})"
        window = f"{rule.lookback_ms / 1000:g}s"
        if rule.kind == "drop":
            return f"dropped from {base:g} to {v:g} within {window}"
        if rule.kind == "spike":
            return f"rose from {base:g} to {v:g} (>= {rule.factor:g}x) within {window}"
        if rule.kind == "deviation":
            return f"mean {base:g} over {window} deviates from nominal {rule.nominal:g}"
        return f"changes faster than {rule.threshold:g}/s over {window}"
