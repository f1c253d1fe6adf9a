"""Anomaly windows: rules over a per-tag lookback window, evaluated at every point.

For each point ``i`` of a tag at time ``t`` the rule looks at the tag's points in
``(t - lookback_ms, t]`` (including ones from earlier batches) and tests:

- ``drop``: ``(max - v) / |max| >= threshold`` (relative) or ``max - v >= threshold`` (absolute);
- ``spike``: ``v >= factor * min`` with ``min >= min_baseline`` (relative rise);
- ``deviation``: ``|mean - nominal| / |nominal| >= threshold`` (mean over the lookback);
- ``rate``: ``|v - v_oldest| / seconds(t - t_oldest) >= threshold`` once the lookback holds at
  least half a window of data (the window is ``[t - lookback_ms, t]`` for this rule, so a
  lookback equal to the sample interval holds two samples);
- ``flatline``: the value has changed by at most ``tolerance`` between consecutive samples for
  at least ``lookback_ms`` (a frozen sensor or a stuck register; ``tolerance: 0`` = exactly
  equal);
- ``clipping``: the value has stayed within ``tolerance`` of ``limit`` for at least
  ``lookback_ms`` (an inverter held at its rated power, a turbine at a curtailment setpoint;
  output above the limit is not a plateau at it);
- ``gap``: no sample of the tag for more than ``lookback_ms``. The point that ends the gap
  gives both events: ``raised`` at the time the gap became one (the last sample before it +
  ``lookback_ms``) and ``cleared`` at its own time, with ``gap_ms`` in the details. So a gap is
  reported once it ends, the same in a live run and a replay (a tag that has stopped for good
  shows as its input's disconnected or stale state, not here);
- ``outlier``: Hampel filter: ``|v - median| > threshold * 1.4826 * MAD`` over the tag's earlier
  points in ``(t - lookback_ms, t)``, once at least ``min_points`` of them are there (and the
  MAD is not zero).

Points below ``ignore_below`` take no part (e.g. inverter efficiency reported 0 at night), nor
do points taken while the sun is lower than ``sun_above_deg`` degrees at the site
(``site.latitude`` / ``site.longitude``; e.g. 5: judge PV tags in daylight only). Both depend
on the point alone, so gating never depends on batching.

``when`` gates a rule on another tag of the same shard (:class:`Gate`; e.g. judge PV power
only while irradiance is above 50 W/m2): a point at ``t`` is judged only when the gate tag's
latest sample at or before ``t``, at most ``max_age_ms`` old, lies in the range (any one of
the gate tags, when the pattern names several). A point waits until every gate tag has sent
a sample at or after ``t``, or until its own tag is ``max_skew_ms`` further on (a gate that is
silent or lags). The gate's samples are kept ``max_lead_ms`` (1 h) back. So results are the
same for any batching and any interleaving of sources in which the gate's source is at most
``max_skew_ms`` behind the rule's and at most ``max_lead_ms`` ahead.
A rule raises one event when its condition turns true for a tag and one ``cleared`` event
when it turns false again: no event storms.

Points are evaluated in arrival order per tag: a point that is not newer than the tag's newest
evaluated point (late or duplicate) is skipped for anomaly purposes and counted in
``skipped`` (it still reaches the aggregates or the late stream). Evaluation depends only on
the points and their per-tag order, not on how they were batched, so replaying the raw topic
(which keeps per-tag order) gives the same anomalies as the live run.

Everything is columnar and bounded: for max/min rules the history keeps only a "staircase"
(points that beat every later point of their tag, the vectorised form of a monotonic deque);
within a batch, range extrema come from a sparse table; means use cumulative sums.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from functools import partial
from typing import Literal, NamedTuple

import numpy as np
import numpy.typing as npt
from pydantic import ConfigDict

from operators._state import PickleCopy, TableCache, TagRegistry, tag_matches, tag_order
from operators.errors import RuleError
from operators.sun import sun_elevation_deg
from wire.records import Event, PointBatch, TagRef

__all__ = ["AnomalyDetector", "AnomalyRule", "Gate"]

Kind = Literal["drop", "spike", "deviation", "rate", "flatline", "clipping", "outlier", "gap"]
_TS_BITS = 42  # epoch ms < 2**42 until 2109; tag ids live above
_TS_MASK = (1 << _TS_BITS) - 1


@dataclass(frozen=True, slots=True)
class Gate:
    """``when:`` of a rule: judge its points only while another tag's value is in range.

    Open at ``t`` when the latest sample of a tag matching ``tag`` at or before ``t`` (at
    most ``max_age_ms`` old) is greater than ``above`` and less than ``below`` (either may be
    left out). See the module docstring for ``max_skew_ms``.
    """

    __pydantic_config__ = ConfigDict(extra="forbid")

    tag: str
    above: float | None = None
    below: float | None = None
    max_age_ms: int = 300_000
    max_skew_ms: int = 60_000
    max_lead_ms: int = 3_600_000

    def __post_init__(self) -> None:
        if self.above is None and self.below is None:
            msg = f"when: give above and/or below (the range of {self.tag} that opens the gate)"
            raise RuleError(msg)
        if self.above is not None and self.below is not None and self.above >= self.below:
            msg = f"when: above ({self.above:g}) must be less than below ({self.below:g})"
            raise RuleError(msg)
        if self.max_age_ms <= 0 or self.max_skew_ms < 0 or self.max_lead_ms < 0:
            msg = "when: max_age_ms must be positive, max_skew_ms and max_lead_ms >= 0"
            raise RuleError(msg)

    def sampling_problem(self, interval_ms: int) -> str | None:
        """Why the gate cannot open on a gate tag sampled every ``interval_ms``; None if it can."""
        if self.max_age_ms < interval_ms:
            return (
                f"a gate tag sampled every {interval_ms} ms is older than max_age_ms "
                f"({self.max_age_ms}) for most of the time, so the gate stays mostly closed; "
                f"make it at least {interval_ms} ms"
            )
        return None

    def opens(self, value: npt.NDArray[np.float64]) -> npt.NDArray[np.bool_]:
        """Return which gate values open the gate (NaN never does)."""
        ok = ~np.isnan(value)
        with np.errstate(invalid="ignore"):
            if self.above is not None:
                ok &= value > self.above
            if self.below is not None:
                ok &= value < self.below
        return ok


@dataclass(slots=True)
class _GateTrack:
    """One gate tag's recent samples: times, whether each opens the gate, newest time."""

    ts: npt.NDArray[np.int64] = field(default_factory=lambda: np.empty(0, np.int64))
    ok: npt.NDArray[np.bool_] = field(default_factory=lambda: np.empty(0, np.bool_))
    newest: int = -1


@dataclass(slots=True)
class _Held:
    """Fresh points of a gated rule waiting for their gate, by tag then time."""

    g: npt.NDArray[np.int64] = field(default_factory=lambda: np.empty(0, np.int64))
    ts: npt.NDArray[np.int64] = field(default_factory=lambda: np.empty(0, np.int64))
    val: npt.NDArray[np.float64] = field(default_factory=lambda: np.empty(0, np.float64))


@dataclass(frozen=True, slots=True)
class AnomalyRule:
    """One anomaly rule; see the module docstring for the semantics of each kind."""

    __pydantic_config__ = ConfigDict(extra="forbid")

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
    tolerance: float = 0.0
    limit: float | None = None
    min_points: int = 5
    sun_above_deg: float | None = None
    when: Gate | None = None

    def __post_init__(self) -> None:
        if self.lookback_ms <= 0:
            msg = f"anomaly rule {self.id}: lookback_ms must be positive"
            raise RuleError(msg)
        if self.tolerance < 0:
            msg = f"anomaly rule {self.id}: tolerance must be >= 0"
            raise RuleError(msg)
        if self.kind == "clipping" and self.limit is None:
            msg = f"anomaly rule {self.id}: clipping needs limit (the rated or clipping level)"
            raise RuleError(msg)
        if self.kind == "outlier" and (self.threshold <= 0 or self.min_points < 3):
            msg = (
                f"anomaly rule {self.id}: outlier needs threshold > 0 (MADs, e.g. 3) and "
                "min_points >= 3"
            )
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

    def sampling_problem(self, interval_ms: int) -> str | None:
        """Why the rule cannot work on a tag sampled every ``interval_ms``; None if it can.

        A lookback that never holds the samples the rule compares never fires; a ``gap``
        lookback shorter than the interval fires at every sample.
        """
        held = -(-self.lookback_ms // interval_ms)  # samples in (t - lookback_ms, t]
        every = f"a tag sampled every {interval_ms} ms"
        # rate's window includes t - lookback_ms: one interval holds two samples there.
        two = self.lookback_ms >= interval_ms if self.kind == "rate" else held >= 2
        if self.kind in ("drop", "spike", "rate") and not two:
            bound = "at least" if self.kind == "rate" else "longer than"
            return (
                f"a lookback of {self.lookback_ms} ms never holds two samples of {every}, "
                f"so rule {self.id} ({self.kind}) can never fire; make it {bound} "
                f"{interval_ms} ms"
            )
        if self.kind == "outlier" and held - 1 < self.min_points:
            return (
                f"a lookback of {self.lookback_ms} ms holds {held - 1} earlier samples of "
                f"{every}, fewer than min_points ({self.min_points}), so rule {self.id} "
                f"(outlier) can never fire; make it longer than {self.min_points * interval_ms} ms"
            )
        if self.kind == "gap" and self.lookback_ms < interval_ms:
            return (
                f"{every} is missing for {interval_ms} ms between any two samples, longer "
                f"than the lookback of {self.lookback_ms} ms, so rule {self.id} (gap) would "
                f"fire at every sample; make it at least {interval_ms} ms"
            )
        return None


def _sparse(
    values: npt.NDArray[np.float64], fn: np.ufunc, longest: int
) -> list[npt.NDArray[np.float64]]:
    """Sparse table of ``fn`` over ``values`` for ranges of up to ``longest`` values."""
    table = [values]
    span = 1
    while span * 2 <= min(len(values), longest):
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
    # Mean rules: the tag's running sum of all evaluated values up to each point.
    prefix: npt.NDArray[np.float64] = field(default_factory=lambda: np.empty(0, np.float64))


def _running_sums(
    start: npt.NDArray[np.float64],
    val: npt.NDArray[np.float64],
    starts: npt.NDArray[np.intp],
    ends: npt.NDArray[np.intp],
) -> npt.NDArray[np.float64]:
    """Per-run running sums ``start[r] + v_0 + ... + v_i``, added strictly one after another.

    The additions happen in the same order however the points were batched, so window sums
    taken as differences of these running sums are identical in a live run and a replay.
    """
    lengths = ends - starts
    width = int(lengths.max()) if len(lengths) else 0
    out = np.empty(len(val), np.float64)
    if len(lengths) * (width + 1) <= 4 * len(val) + 64:
        grid = np.zeros((len(lengths), width + 1), np.float64)
        grid[:, 0] = start
        col = np.arange(len(val)) - np.repeat(starts, lengths) + 1
        row = np.repeat(np.arange(len(lengths)), lengths)
        grid[row, col] = val
        out[:] = np.cumsum(grid, axis=1)[row, col]  # accumulate runs along each row in order
        return out
    for r, (a, b) in enumerate(zip(starts.tolist(), ends.tolist(), strict=True)):
        out[a:b] = np.cumsum(np.r_[start[r], val[a:b]])[1:]
    return out


class _Fresh(NamedTuple):
    """A batch's fresh points of one rule, by tag then arrival; runs of a tag: starts..ends."""

    g: npt.NDArray[np.int64]
    ts: npt.NDArray[np.int64]
    val: npt.NDArray[np.float64]
    starts: npt.NDArray[np.intp]
    ends: npt.NDArray[np.intp]


Verdict = tuple[npt.NDArray[np.bool_], npt.NDArray[np.float64], npt.NDArray[np.float64]]


def _hampel(rule: AnomalyRule, hist: _History, pts: _Fresh) -> Verdict:
    """Hampel test of each point against the tag's earlier points in ``(t - lookback, t)``."""
    g, ts, val, starts, ends = pts
    cond = np.zeros(len(g), np.bool_)
    score = np.zeros(len(g), np.float64)
    median = np.full(len(g), np.nan)
    for a, b in zip(starts.tolist(), (ends + 1).tolist(), strict=True):
        gid = int(g[a])
        h0 = int(np.searchsorted(hist.key, gid << _TS_BITS))
        h1 = int(np.searchsorted(hist.key, (gid << _TS_BITS) | _TS_MASK, side="right"))
        t_all = np.r_[hist.key[h0:h1] & _TS_MASK, ts[a:b]]
        v_all = np.r_[hist.value[h0:h1], val[a:b]]
        nh = h1 - h0
        here = np.arange(nh, nh + (b - a))
        lo = np.searchsorted(t_all, t_all[here] - rule.lookback_ms, side="right")
        for c0 in range(0, len(here), 4096):  # bounded memory: rows x window width
            rows, los = here[c0 : c0 + 4096], lo[c0 : c0 + 4096]
            n = rows - los
            width = int(n.max()) if len(n) else 0
            if width < rule.min_points:
                continue
            idx = los[:, None] + np.arange(width)[None, :]
            inside = idx < rows[:, None]
            win = np.where(inside, v_all[np.minimum(idx, len(v_all) - 1)], np.nan)
            with np.errstate(invalid="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows: too few points
                med = np.nanmedian(win, axis=1)
                mad = np.nanmedian(np.abs(win - med[:, None]), axis=1) * 1.4826
                z = np.abs(v_all[rows] - med) / np.where(mad > 0, mad, np.nan)
            ok = (n >= rule.min_points) & (mad > 0)
            sl = slice(a + c0, a + c0 + len(rows))
            cond[sl] = ok & (z > rule.threshold)
            score[sl] = np.where(ok, z, 0.0)
            median[sl] = med
    return cond, score, np.where(np.isnan(median), val, median)


class AnomalyDetector(PickleCopy):
    """Evaluates a set of rules over point batches; keeps each tag's lookback history."""

    def __init__(
        self, rules: tuple[AnomalyRule, ...], *, location: tuple[float, float] | None = None
    ) -> None:
        ids = [r.id for r in rules]
        if len(set(ids)) != len(ids):
            msg = f"anomaly rule ids must be unique: {ids}"
            raise RuleError(msg)
        for i, r in enumerate(rules):
            if r.sun_above_deg is not None and location is None:
                msg = (
                    f"rules.{i}.sun_above_deg: rule {r.id} gates on the sun, which needs the "
                    "site's place (site.latitude and site.longitude)"
                )
                raise RuleError(msg)
        self.rules = rules
        self.location = location
        self._reg = TagRegistry()
        self._match: dict[str, dict[TagRef, bool]] = {r.id: {} for r in rules}
        self._hist: dict[str, _History] = {r.id: _History() for r in rules}
        self._active: dict[str, set[int]] = {r.id: set() for r in rules}
        self._newest: dict[str, npt.NDArray[np.int64]] = {
            r.id: np.empty(0, np.int64) for r in rules
        }
        self._total: dict[str, npt.NDArray[np.float64]] = {
            r.id: np.empty(0, np.float64) for r in rules
        }
        # flatline: each tag's last value; flatline and clipping: when its current run began
        # (-1: no run).
        self._last: dict[str, npt.NDArray[np.float64]] = {
            r.id: np.empty(0, np.float64) for r in rules
        }
        self._run_start: dict[str, npt.NDArray[np.int64]] = {
            r.id: np.empty(0, np.int64) for r in rules
        }
        self.skipped: dict[str, int] = {}
        self._luts: dict[str, TableCache[npt.NDArray[np.int64]]] = {
            r.id: TableCache(partial(self._rule_lut, r)) for r in rules
        }
        # gap: each tag's last judged point (-1: none yet).
        self._judged: dict[str, npt.NDArray[np.int64]] = {
            r.id: np.empty(0, np.int64) for r in rules
        }
        # when: the gate tags' recent samples and the points waiting for them, per rule.
        self._gates: dict[str, dict[int, _GateTrack]] = {r.id: {} for r in rules if r.when}
        self._held: dict[str, _Held] = {r.id: _Held() for r in rules if r.when}
        self._gate_luts: dict[str, TableCache[npt.NDArray[np.int64]]] = {
            r.id: TableCache(partial(self._gate_lut, r.when)) for r in rules if r.when
        }

    def process(self, batch: PointBatch) -> list[Event]:
        """Evaluate all rules on a batch; return raise/clear events in time order."""
        events: list[Event] = []
        if not len(batch):
            return events
        for rule in self.rules:
            if rule.when is not None:
                self._feed_gate(rule.id, rule.when, batch)
        for rule in self.rules:
            events.extend(self._run(rule, batch))
        events.sort(key=lambda e: (e.ts_ms, e.rule, e.path))
        return events

    def _rule_lut(self, rule: AnomalyRule, tags: tuple[TagRef, ...]) -> npt.NDArray[np.int64]:
        """Tag id of each table entry the rule applies to, -1 elsewhere."""
        cache = self._match[rule.id]
        lut = np.full(len(tags), -1, np.int64)
        for i, ref in enumerate(tags):
            m = cache.get(ref)
            if m is None:
                m = cache[ref] = tag_matches(rule.tags, ref)
            if m:
                lut[i] = self._reg.id(ref)
        return lut

    def _gate_lut(self, gate: Gate, tags: tuple[TagRef, ...]) -> npt.NDArray[np.int64]:
        """Tag id of each table entry that is a gate tag, -1 elsewhere."""
        lut = np.full(len(tags), -1, np.int64)
        for i, ref in enumerate(tags):
            if tag_matches(gate.tag, ref):
                lut[i] = self._reg.id(ref)
        return lut

    def _feed_gate(self, rule_id: str, gate: Gate, batch: PointBatch) -> None:
        """Add the batch's samples of the rule's gate tags (in each tag's arrival order)."""
        gid = self._gate_luts[rule_id].get(batch.tags)[batch.tag_idx]
        sel = gid >= 0
        live = batch.live()
        if live is not None:
            sel &= live
        if not sel.any():
            return
        g, ts = gid[sel], batch.ts_ms[sel]
        ok = gate.opens(batch.value[sel])
        tracks = self._gates[rule_id]
        for tag in np.unique(g).tolist():
            mine = g == tag
            t, o = ts[mine], ok[mine]
            track = tracks.setdefault(tag, _GateTrack())
            # A sample not newer than the tag's newest is late: it cannot change the past.
            fresh = t > np.maximum.accumulate(np.r_[track.newest, t])[:-1]
            t, o = t[fresh], o[fresh]
            if not len(t):
                continue
            track.newest = int(t[-1])
            # A gate may run up to max_lead_ms ahead of the rule's tags.
            floor = track.newest - max(gate.max_lead_ms, gate.max_skew_ms)
            cut = int(np.searchsorted(track.ts, floor - gate.max_age_ms))
            track.ts = np.r_[track.ts[cut:], t]
            track.ok = np.r_[track.ok[cut:], o]

    def _gate(
        self,
        rule: AnomalyRule,
        gate: Gate,
        g: npt.NDArray[np.int64],
        ts: npt.NDArray[np.int64],
        val: npt.NDArray[np.float64],
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.float64]]:
        """Points (by tag, then time) the gate decides and opens; the undecided wait."""
        held = self._held[rule.id]
        if len(held.g):
            order = np.argsort(np.r_[held.g, g], kind="stable")  # waiting ones come first
            g = np.r_[held.g, g][order]
            ts = np.r_[held.ts, ts][order]
            val = np.r_[held.val, val][order]
        tracks = self._gates[rule.id].values()
        gate_known = min((t.newest for t in tracks), default=-1)
        decided = ts <= self._newest[rule.id][g] - gate.max_skew_ms
        if tracks:
            decided |= ts <= gate_known
        wait = ~decided
        self._held[rule.id] = _Held(g[wait], ts[wait], val[wait])
        g, ts, val = g[decided], ts[decided], val[decided]
        opened = np.zeros(len(g), np.bool_)
        for t in tracks:
            if not len(t.ts):
                continue
            at = np.searchsorted(t.ts, ts, side="right") - 1
            safe = np.maximum(at, 0)
            opened |= (at >= 0) & (t.ts[safe] >= ts - gate.max_age_ms) & t.ok[safe]
        return g[opened], ts[opened], val[opened]

    def _run(self, rule: AnomalyRule, batch: PointBatch) -> list[Event]:
        gid = self._luts[rule.id].get(batch.tags)[batch.tag_idx]
        sel = gid >= 0
        live = batch.live()
        if live is not None:
            sel &= live
        if rule.ignore_below is not None:
            sel &= batch.value >= rule.ignore_below
        if rule.sun_above_deg is not None and self.location is not None and sel.any():
            sel &= sun_elevation_deg(batch.ts_ms, *self.location) >= rule.sun_above_deg
        if not sel.any() and not (rule.id in self._held and len(self._held[rule.id].g)):
            return []
        # Points are evaluated in arrival order per tag: a point not newer than every point
        # of its tag that arrived before it (in earlier batches or earlier in this one) is
        # late or a duplicate; it is skipped and counted. Batching therefore never matters.
        newest = self._newest[rule.id]
        if len(newest) < len(self._reg):
            newest = self._newest[rule.id] = np.r_[
                newest, np.full(len(self._reg) - len(newest), -1, np.int64)
            ]
        g, ts, val = np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float64)
        if sel.any():
            o = tag_order(gid[sel], batch.ts_ms[sel], newest)
            fresh = o.ts > o.before
            if not fresh.all():
                self.skipped[rule.id] = self.skipped.get(rule.id, 0) + int((~fresh).sum())
            g, ts, val = o.gid[fresh], o.ts[fresh], batch.value[sel][o.order][fresh]
        if len(g):
            ends = np.flatnonzero(np.r_[g[1:] != g[:-1], True])
            newest[g[ends]] = ts[ends]
        if rule.when is not None:
            g, ts, val = self._gate(rule, rule.when, g, ts, val)
        if not len(g):
            return []
        key = (g << _TS_BITS) | ts  # sorted: fresh points rise in time within each tag
        starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
        ends = np.r_[starts[1:], len(g)] - 1
        if rule.kind == "gap":
            judged = self._judged[rule.id]
            if len(judged) < len(self._reg):
                judged = self._judged[rule.id] = np.r_[
                    judged, np.full(len(self._reg) - len(judged), -1, np.int64)
                ]
            before = np.r_[-1, ts[:-1]]
            before[starts] = judged[g[starts]]
            judged[g[ends]] = ts[ends]
            return self._gaps(rule, g, ts, val, before)
        seg = np.cumsum(np.r_[True, g[1:] != g[:-1]]) - 1
        # Window start inside this batch's points of the same tag.
        lo_new = np.maximum(np.searchsorted(key, key - rule.lookback_ms, side="right"), starts[seg])
        hist = self._hist[rule.id]
        # Window start inside the kept history (sorted by key; all older than the batch).
        h_lo = np.searchsorted(hist.key, key - rule.lookback_ms, side="right")
        h_end = np.searchsorted(hist.key, g << _TS_BITS | _TS_MASK, side="right")
        has_hist = h_lo < h_end
        prefix = None
        if rule.kind in ("flatline", "clipping"):
            cond, score, baseline = self._runs(rule, _Fresh(g, ts, val, starts, ends))
        elif rule.kind == "outlier":
            cond, score, baseline = _hampel(rule, hist, _Fresh(g, ts, val, starts, ends))
        elif rule.kind in ("drop", "spike"):
            fn = np.maximum if rule.kind == "drop" else np.minimum
            upto = np.arange(len(val))
            longest = int((upto - lo_new).max()) + 1 if len(val) else 1
            part = _range_query(_sparse(val, fn, longest), lo_new, upto, fn)
            # History is a staircase: its first point inside the window is the extremum.
            h_val = (
                hist.value[np.minimum(h_lo, max(len(hist.value) - 1, 0))]
                if len(hist.value)
                else part
            )
            ext = np.where(has_hist, fn(part, h_val), part)
            if rule.kind == "drop":
                gap = ext - val
                with np.errstate(divide="ignore", invalid="ignore"):
                    score = (
                        np.where(np.abs(ext) > 0, gap / np.abs(ext), 0.0) if rule.relative else gap
                    )
                cond = score >= rule.threshold
            else:
                cond = (ext >= rule.min_baseline) & (val >= rule.factor * ext)
                with np.errstate(divide="ignore", invalid="ignore"):
                    score = np.where(ext > 0, val / ext, 0.0)
            baseline = ext
        else:
            n_new = np.arange(len(val)) - lo_new + 1
            n_hist = np.where(has_hist, h_end - h_lo, 0)
            if rule.kind == "deviation":
                total = self._total[rule.id]
                if len(total) < len(self._reg):
                    total = self._total[rule.id] = np.r_[
                        total, np.zeros(len(self._reg) - len(total), np.float64)
                    ]
                prefix = _running_sums(total[g[starts]], val, starts, ends + 1)
                total[g[ends]] = prefix[ends]
                # Window sum = running sum here - running sum at the window's first point
                # + that point's value (from the history when the window reaches into it).
                first = np.minimum(h_lo, max(len(hist.key) - 1, 0))
                if len(hist.key):
                    first_p = np.where(has_hist, hist.prefix[first], prefix[lo_new])
                    first_v = np.where(has_hist, hist.value[first], val[lo_new])
                else:
                    first_p, first_v = prefix[lo_new], val[lo_new]
                mean = (prefix - first_p + first_v) / (n_new + n_hist)
                assert rule.nominal is not None
                score = np.abs(mean - rule.nominal) / abs(rule.nominal)
                cond = score >= rule.threshold
                baseline = mean
            else:  # rate: against the oldest point in [t - lookback, t]
                lo_new = np.maximum(
                    np.searchsorted(key, key - rule.lookback_ms, side="left"), starts[seg]
                )
                h_lo = np.searchsorted(hist.key, key - rule.lookback_ms, side="left")
                has_hist = h_lo < h_end
                safe = np.minimum(h_lo, max(len(hist.key) - 1, 0))
                old_ts = np.where(
                    has_hist, hist.key[safe] & _TS_MASK if len(hist.key) else 0, ts[lo_new]
                )
                old_v = np.where(
                    has_hist, hist.value[safe] if len(hist.value) else 0.0, val[lo_new]
                )
                span_ms = (ts - old_ts).astype(np.float64)
                with np.errstate(divide="ignore", invalid="ignore"):
                    score = np.where(span_ms > 0, np.abs(val - old_v) / (span_ms / 1000.0), 0.0)
                cond = (score >= rule.threshold) & (span_ms * 2 >= rule.lookback_ms)
                baseline = old_v
        events = self._transitions(rule, g, ts, val, cond, score, baseline)
        self._update_history(rule, hist, key, val, prefix if rule.kind == "deviation" else None)
        return events

    def _gaps(
        self,
        rule: AnomalyRule,
        g: npt.NDArray[np.int64],
        ts: npt.NDArray[np.int64],
        val: npt.NDArray[np.float64],
        before: npt.NDArray[np.int64],
    ) -> list[Event]:
        """Raise and clear a gap at each point that ends one.

        ``before`` holds the time of the tag's previous point (-1 for its first point).
        """
        events: list[Event] = []
        for k in np.flatnonzero((before >= 0) & (ts - before > rule.lookback_ms)).tolist():
            ref = self._reg[int(g[k])]
            t, last = int(ts[k]), int(before[k])
            details = {
                "kind": "gap",
                "lookback_ms": rule.lookback_ms,
                "last_sample_ms": last,
                "gap_ms": t - last,
                "value": float(val[k]),
                "unit": ref.unit,
            }
            for state, at, message in (
                ("raised", last + rule.lookback_ms, f"no sample for {rule.lookback_ms / 1000:g}s"),
                ("cleared", t, f"samples again after {(t - last) / 1000:g}s without"),
            ):
                events.append(
                    Event(
                        kind="anomaly",
                        rule=rule.id,
                        path=ref.path,
                        ts_ms=at,
                        severity=rule.severity,
                        state=state,
                        message=message,
                        details=details,
                    )
                )
        return events

    def _carry(self, rule: AnomalyRule) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
        last, run = self._last[rule.id], self._run_start[rule.id]
        grow = len(self._reg) - len(last)
        if grow > 0:
            last = self._last[rule.id] = np.r_[last, np.full(grow, np.nan)]
            run = self._run_start[rule.id] = np.r_[run, np.full(grow, -1, np.int64)]
        return last, run

    def _runs(self, rule: AnomalyRule, pts: _Fresh) -> Verdict:
        """Flatline and clipping: how long the tag's current run has lasted at each point."""
        g, ts, val, starts, ends = pts
        last, run = self._carry(rule)
        first = np.zeros(len(g), np.bool_)
        first[starts] = True
        carried_run = run[g[starts]]
        if rule.kind == "flatline":
            prev = np.r_[np.nan, val[:-1]]
            prev[starts] = last[g[starts]]
            with np.errstate(invalid="ignore"):
                begins = ~(np.abs(val - prev) <= rule.tolerance)  # NaN (no previous): begins
            in_run = np.ones(len(g), np.bool_)
            baseline = np.where(np.isnan(prev), val, prev)
        else:
            assert rule.limit is not None
            in_run = np.abs(val - rule.limit) <= rule.tolerance
            prev_in = np.r_[False, in_run[:-1]]
            prev_in[starts] = carried_run >= 0
            begins = in_run & ~prev_in
            baseline = np.full(len(g), float(rule.limit))
        marker = np.where(begins, ts, -1)
        head = starts[~begins[starts]]
        marker[head] = run[g[head]]
        # Latest run start at or before each point, per tag (times rise within a tag).
        seg = np.cumsum(first) - 1
        off = seg.astype(np.int64) << (_TS_BITS + 1)
        run_start = np.maximum.accumulate(marker + off) - off
        duration = (ts - run_start).astype(np.float64)
        cond = in_run & (run_start >= 0) & (duration >= rule.lookback_ms)
        last[g[ends]] = val[ends]
        run[g[ends]] = np.where(in_run[ends], run_start[ends], -1)
        return cond, duration, baseline

    def _update_history(
        self,
        rule: AnomalyRule,
        hist: _History,
        key: npt.NDArray[np.int64],
        val: npt.NDArray[np.float64],
        prefix: npt.NDArray[np.float64] | None = None,
    ) -> None:
        """Merge the batch into the history and keep only what later lookbacks can reach."""
        all_key = np.concatenate([hist.key, key])
        all_val = np.concatenate([hist.value, val])
        order = np.argsort(all_key, kind="stable")  # two sorted runs: a linear merge
        all_key, all_val = all_key[order], all_val[order]
        all_p = None if prefix is None else np.concatenate([hist.prefix, prefix])[order]
        g = all_key >> _TS_BITS
        ts = all_key & _TS_MASK
        brk = np.r_[True, g[1:] != g[:-1]]
        starts = np.flatnonzero(brk)
        seg = np.cumsum(brk) - 1
        newest = np.maximum.reduceat(ts, starts)
        # rate looks back to t - lookback inclusive; the others to just after it.
        reach = rule.lookback_ms + (1 if rule.kind == "rate" else 0)
        keep = ts > newest[seg] - reach
        all_key, all_val, g = all_key[keep], all_val[keep], g[keep]
        if all_p is not None:
            all_p = all_p[keep]
        if rule.kind in ("drop", "spike") and len(all_val):
            # Staircase: keep a point only if it beats every later point of its tag; that is
            # all a window maximum (minimum) ending at a later time can use. Ranks make the
            # per-tag running extremum exact in integers. (Only points within the lookback,
            # each tag's newest ones, are left: every later point of a tag is among them.)
            _, rank = np.unique(all_val if rule.kind == "drop" else -all_val, return_inverse=True)
            rank = rank.astype(np.int64)
            rev_rank, rev_brk = rank[::-1], np.r_[True, g[::-1][1:] != g[::-1][:-1]]
            off = (np.cumsum(rev_brk) - 1) * (len(rank) + 1)
            run = np.maximum.accumulate(rev_rank + off) - off
            later = np.r_[-1, run[:-1]]
            later[rev_brk] = -1
            stairs = (rev_rank > later)[::-1]
            all_key, all_val = all_key[stairs], all_val[stairs]
            if all_p is not None:
                all_p = all_p[stairs]
        hist.key, hist.value = all_key, all_val
        if all_p is not None:
            hist.prefix = all_p

    def _transitions(
        self,
        rule: AnomalyRule,
        g: npt.NDArray[np.int64],
        ts: npt.NDArray[np.int64],
        val: npt.NDArray[np.float64],
        cond: npt.NDArray[np.bool_],
        score: npt.NDArray[np.float64],
        baseline: npt.NDArray[np.float64],
    ) -> list[Event]:
        active = self._active[rule.id]
        events: list[Event] = []
        pos = np.arange(len(g))
        gn, cn = g, cond
        first = np.r_[True, gn[1:] != gn[:-1]]
        prev = np.r_[False, cn[:-1]]
        init = np.fromiter((int(x) in active for x in gn[first].tolist()), np.bool_)
        prev[first] = init
        for k in np.flatnonzero(cn != prev).tolist():
            p = pos[k]
            gid = int(gn[k])
            ref = self._reg[gid]
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
        if rule.kind == "flatline":
            return f"flat at {v:g} (changes <= {rule.tolerance:g}) for {window} or more"
        if rule.kind == "clipping":
            return f"held at {v:g}, within {rule.tolerance:g} of {base:g}, for {window} or more"
        if rule.kind == "outlier":
            return f"{v:g} is an outlier against the median {base:g} of the last {window}"
        return f"changes faster than {rule.threshold:g}/s over {window}"
