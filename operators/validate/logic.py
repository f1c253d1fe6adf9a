"""Columnar validation of point batches.

Checks, in order, each rejecting into dead letters with a reason:

1. quality filter (by default BAD is rejected; UNCERTAIN passes);
2. non-finite values (NaN, +-inf);
3. timestamp guard: points further than ``max_future_ms`` ahead of, or ``max_past_ms`` behind,
   the batch's receive time (skewed device clocks);
4. per-tag range rules (first matching rule wins);
5. duplicates: the same tag and timestamp twice in a batch, or again as the tag's newest
   timestamp already accepted.

Then unit conversion (e.g. kW -> MW) rewrites value and unit, and stale detection marks points
whose value has not changed for ``stale_after_ms`` as UNCERTAIN (they are still delivered).
"Not changed" means within ``stale_tolerance`` of the previous value (absolute, or a fraction
of it with ``stale_relative``); values in ``stale_ignore_values`` or below
``stale_ignore_below``, and points taken while the sun is lower than ``stale_sun_above_deg`` at
the site, are never stale.
Stale is judged per tag in arrival order: an episode is raised at its first stale point and
cleared at the next change of value, whatever the batching.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from operators._state import PickleCopy, TableCache, TagRegistry, run_max, tag_matches
from operators.errors import RuleError
from operators.sun import sun_elevation_deg
from operators.validate.config import ValidateOp
from wire.records import DeadLetter, PointBatch, Quality, TagRef, ms_to_iso

__all__ = ["ValidationResult", "Validator"]


@dataclass(frozen=True, slots=True)
class ValidationResult:
    """Accepted points, rejected points as dead letters, and tags that just went stale."""

    ok: PointBatch
    rejected: list[DeadLetter]
    newly_stale: list[tuple[TagRef, int]] = field(default_factory=list)
    stale_cleared: list[tuple[TagRef, int]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _TagPlan:
    lo: float
    hi: float
    factor: float
    offset: float
    out: TagRef
    stale: bool


@dataclass(frozen=True, slots=True, eq=False)
class _TablePlan:
    """Everything a batch's tag table resolves to, as arrays indexed like the table."""

    plans: list[_TagPlan]
    lo: npt.NDArray[np.float64]
    hi: npt.NDArray[np.float64]
    factor: npt.NDArray[np.float64]
    offset: npt.NDArray[np.float64]
    converts: bool
    stale: npt.NDArray[np.bool_]
    out_tags: tuple[TagRef, ...]
    gid: npt.NDArray[np.int64]


class Validator(PickleCopy):
    """Stateful (per stream shard) validator; keeps each tag's newest timestamp and value."""

    def __init__(
        self,
        rules: ValidateOp,
        *,
        stage: str | None = None,
        location: tuple[float, float] | None = None,
    ) -> None:
        if rules.stale_sun_above_deg is not None and location is None:
            msg = (
                "stale_sun_above_deg gates stale detection on the sun, which needs the site's "
                "place (site.latitude and site.longitude)"
            )
            raise RuleError(msg)
        self.location = location
        self.rules = rules
        self.stage = stage or rules.id
        self._plans: dict[TagRef, _TagPlan] = {}
        self._reg = TagRegistry()
        self._last_ts = np.empty(0, np.int64)
        self._last_val = np.empty(0, np.float64)
        self._last_change = np.empty(0, np.int64)
        self._stale = np.empty(0, np.bool_)
        self.counts: dict[str, int] = {}
        self._tables: TableCache[_TablePlan] = TableCache(self._table)

    def _table(self, tags: tuple[TagRef, ...]) -> _TablePlan:
        plans = [self._plan(t) for t in tags]
        factor = np.array([p.factor for p in plans], np.float64)
        offset = np.array([p.offset for p in plans], np.float64)
        out_tags = tuple(p.out for p in plans)
        return _TablePlan(
            plans=plans,
            lo=np.array([p.lo for p in plans], np.float64),
            hi=np.array([p.hi for p in plans], np.float64),
            factor=factor,
            offset=offset,
            converts=bool((factor != 1.0).any() or (offset != 0.0).any()),
            stale=np.array([p.stale for p in plans], np.bool_),
            out_tags=tags if out_tags == tags else out_tags,
            gid=self._gids(tags),
        )

    def _plan(self, ref: TagRef) -> _TagPlan:
        plan = self._plans.get(ref)
        if plan is not None:
            return plan
        lo, hi = -np.inf, np.inf
        for rule in self.rules.ranges:
            if tag_matches(rule.tags, ref):
                lo = -np.inf if rule.min is None else rule.min
                hi = np.inf if rule.max is None else rule.max
                break
        factor, offset, out = 1.0, 0.0, ref
        for conv in self.rules.conversions:
            if conv.from_unit == ref.unit and tag_matches(conv.tags, ref):
                factor, offset = float(conv.factor or 1.0), float(conv.offset or 0.0)
                out = TagRef(ref.path, conv.to_unit)
                break
        stale = self.rules.stale_after_ms is not None and tag_matches(self.rules.stale_tags, ref)
        plan = self._plans[ref] = _TagPlan(lo, hi, factor, offset, out, stale)
        return plan

    def _gids(self, tags: tuple[TagRef, ...]) -> npt.NDArray[np.int64]:
        lut = self._reg.ids(tags)
        n = len(self._reg)
        if n > len(self._last_ts):
            grow = n - len(self._last_ts)
            self._last_ts = np.r_[self._last_ts, np.full(grow, np.iinfo(np.int64).min)]
            self._last_val = np.r_[self._last_val, np.full(grow, np.nan)]
            self._last_change = np.r_[self._last_change, np.full(grow, np.iinfo(np.int64).min)]
            self._stale = np.r_[self._stale, np.zeros(grow, np.bool_)]
        return lut

    def _reject(
        self, batch: PointBatch, mask: npt.NDArray[np.bool_], reasons: list[str]
    ) -> list[DeadLetter]:
        out = []
        for i in np.flatnonzero(mask).tolist():
            ref = batch.tags[int(batch.tag_idx[i])]
            point = {
                "path": ref.path,
                "unit": ref.unit,
                "ts": ms_to_iso(int(batch.ts_ms[i])),
                "ts_ms": int(batch.ts_ms[i]),
                "value": float(batch.value[i]),
                "quality": Quality(int(batch.quality[i])).name,
            }
            out.append(DeadLetter(self.stage, reasons[i], point, source=batch.source))
            key = reasons[i].split(":", 1)[0]
            self.counts[key] = self.counts.get(key, 0) + 1
        return out

    def process(self, batch: PointBatch) -> ValidationResult:
        """Validate one batch; accepted points keep their relative order."""
        n = len(batch)
        if not n:
            return ValidationResult(batch, [])
        r = self.rules
        table = self._tables.get(batch.tags)
        plans = table.plans
        reasons = [""] * n
        bad = np.zeros(n, np.bool_)

        def flag(mask: npt.NDArray[np.bool_], reason_of: object) -> None:
            new = mask & ~bad
            if new.any():
                for i in np.flatnonzero(new).tolist():
                    reasons[i] = reason_of(i) if callable(reason_of) else str(reason_of)
                bad[new] = True

        accepted_q = np.array(sorted(int(Quality[q]) for q in r.accept_quality), np.uint8)
        flag(
            ~np.isin(batch.quality, accepted_q),
            lambda i: f"quality: {Quality(int(batch.quality[i])).name} is not accepted",
        )
        flag(~np.isfinite(batch.value), lambda i: f"non-finite: value is {batch.value[i]}")
        ref = batch.received_at()
        known = np.asarray(ref) != 0  # 0: receive time unknown, no skew check

        def ref_of(i: int) -> int:
            return ref if isinstance(ref, int) else int(ref[i])

        if r.max_future_ms is not None:
            flag(
                known & (batch.ts_ms > ref + r.max_future_ms),
                lambda i: (
                    f"clock-skew: timestamp {(int(batch.ts_ms[i]) - ref_of(i)) / 1000:.1f}s "
                    f"ahead of receive time (limit {r.max_future_ms / 1000:g}s)"
                ),
            )
        if r.max_past_ms is not None:
            flag(
                known & (batch.ts_ms < ref - r.max_past_ms),
                lambda i: (
                    f"too-old: timestamp {(ref_of(i) - int(batch.ts_ms[i])) / 1000:.1f}s before "
                    f"receive time (limit {r.max_past_ms / 1000:g}s)"
                ),
            )
        lo = table.lo[batch.tag_idx]
        hi = table.hi[batch.tag_idx]
        flag(
            (batch.value < lo) | (batch.value > hi),
            lambda i: (
                f"out-of-range: {batch.value[i]:g} not in "
                f"[{plans[batch.tag_idx[i]].lo:g}, {plans[batch.tag_idx[i]].hi:g}]"
            ),
        )
        gid = table.gid[batch.tag_idx]
        order: npt.NDArray[np.intp] | None = None
        if r.dedupe:
            order = np.lexsort((batch.ts_ms, gid))
            g_s, t_s, ok_s = gid[order], batch.ts_ms[order], ~bad[order]
            # Only accepted points can make a later one a duplicate.
            cand = np.flatnonzero(ok_s)
            dup = np.zeros(n, np.bool_)
            if len(cand) > 1:
                same = (g_s[cand][1:] == g_s[cand][:-1]) & (t_s[cand][1:] == t_s[cand][:-1])
                dup[order[cand[1:][same]]] = True
            dup |= batch.ts_ms == self._last_ts[gid]
            flag(dup, lambda i: f"duplicate: {batch.tags[batch.tag_idx[i]].path} at this time")

        keep = ~bad
        rejected = self._reject(batch, bad, reasons) if bad.any() else []
        ok = batch.select(keep) if bad.any() else batch
        ok_gid = gid[keep]
        newly_stale: list[tuple[TagRef, int]] = []
        cleared: list[tuple[TagRef, int]] = []
        if len(ok):
            value = ok.value
            if table.converts:
                value = value * table.factor[ok.tag_idx] + table.offset[ok.tag_idx]
            quality = ok.quality
            if r.stale_after_ms is not None:
                quality, newly_stale, cleared = self._stale_check(ok, ok_gid, value, table.stale)
            else:
                ok_order = None
                if order is not None:  # the accepted points' own (tag, time) order
                    ok_order = order[keep[order]]
                    if len(ok) < n:
                        ok_order = (np.cumsum(keep) - 1)[ok_order]
                self._remember(ok_gid, ok.ts_ms, value, ok_order)
            ok = ok.with_values(value, tags=table.out_tags, quality=quality)
        return ValidationResult(ok, rejected, newly_stale, cleared)

    def _remember(
        self,
        gid: npt.NDArray[np.int64],
        ts: npt.NDArray[np.int64],
        value: npt.NDArray[np.float64],
        order: npt.NDArray[np.intp] | None = None,
    ) -> None:
        """Keep each tag's newest point (``order``: the stable (tag, time) order, if known)."""
        if order is None:
            order = np.lexsort((ts, gid))
        g, t, v = gid[order], ts[order], value[order]
        last = np.r_[g[1:] != g[:-1], True]
        newer = t[last] >= self._last_ts[g[last]]
        self._last_ts[g[last][newer]] = t[last][newer]
        self._last_val[g[last][newer]] = v[last][newer]

    def _stale_check(
        self,
        ok: PointBatch,
        gid: npt.NDArray[np.int64],
        value: npt.NDArray[np.float64],
        stale_tags: npt.NDArray[np.bool_],
    ) -> tuple[npt.NDArray[np.uint8], list[tuple[TagRef, int]], list[tuple[TagRef, int]]]:
        """Mark points of unchanged value UNCERTAIN; return the tags whose episodes began/ended.

        Each tag's points are taken in arrival order (never re-sorted by time), one after the
        other, carrying the last value, the time its run of equal values began and whether it
        was stale from one batch to the next: how the points are batched cannot change it.
        """
        assert self.rules.stale_after_ms is not None
        order = np.argsort(gid, kind="stable")
        g, t, v = gid[order], ok.ts_ms[order], value[order]
        n = len(g)
        first = np.r_[True, g[1:] != g[:-1]]
        last = np.r_[g[1:] != g[:-1], True]
        prev_v = np.where(first, self._last_val[g], np.r_[np.nan, v[:-1]])
        r = self.rules
        tol = r.stale_tolerance * (np.abs(prev_v) if r.stale_relative else 1.0)
        with np.errstate(invalid="ignore"):
            changed = ~(np.abs(v - prev_v) <= tol)  # NaN (nothing before): a change
        # The run's start is the newest change in arrival order (a delayed point may carry an
        # older time): carry the position of the last change forward within each tag.
        pos = np.arange(n)
        at = run_max(g, np.where(changed | first, pos, -1))
        change_ts = np.where(changed[at], t[at], self._last_change[g[at]])
        stale_sorted = (t - change_ts >= self.rules.stale_after_ms) & stale_tags[ok.tag_idx[order]]
        # Values that are legitimately constant (night zeros, an idle setpoint) never go stale.
        if r.stale_ignore_values:
            stale_sorted &= ~np.isin(v, np.asarray(r.stale_ignore_values, np.float64))
        if r.stale_ignore_below is not None:
            stale_sorted &= ~(v < r.stale_ignore_below)
        if r.stale_sun_above_deg is not None and self.location is not None:
            stale_sorted &= sun_elevation_deg(t, *self.location) >= r.stale_sun_above_deg
        quality = ok.quality.copy()
        stale_pts = order[stale_sorted]
        quality[stale_pts] = np.maximum(quality[stale_pts], int(Quality.UNCERTAIN))
        # An episode starts at the first stale point and ends only when the value changes (a
        # delayed point inside it is not stale itself, but does not end it).
        carried = self._stale[g] & first  # an episode open from earlier batches
        last_start = run_max(g, np.where(stale_sorted | carried, pos, -1) + 1)
        last_change = run_max(g, np.where(changed, pos, -1) + 1)
        in_episode = (last_start > last_change) | ((last_start == last_change) & stale_sorted)
        before = np.where(first, self._stale[g], np.r_[False, in_episode[:-1]])
        raised = stale_sorted & ~before
        cleared = changed & before

        def where(mask: npt.NDArray[np.bool_]) -> list[tuple[TagRef, int]]:
            return [(ok.tags[int(ok.tag_idx[order[k]])], int(t[k])) for k in np.flatnonzero(mask)]

        end_g = g[last]
        self._last_ts[end_g] = np.maximum(self._last_ts[end_g], run_max(g, t)[last])
        self._last_val[end_g] = v[last]
        self._last_change[end_g] = change_ts[last]
        self._stale[end_g] = in_episode[last]
        return quality, where(raised), where(cleared)
