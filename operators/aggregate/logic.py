"""Columnar event-time tumbling-window aggregation (1 minute base windows, 15 minute rollups).

Points are buffered as arrays per base window and summarised once, when the window closes:
sort by (tag, time), then segment reductions. Rollup windows (e.g. 15 min) are combined from
the base-window summaries exactly (Chan's formula for the variance, boundary trapezoids for
the integral), so the 15 min figures equal a direct computation over all points.

Definitions, per tag and window ``[start, start + window_ms)``, over the points sorted by time
(ties keep arrival order):

- ``count, min, max, sum, mean``; ``std`` is the population standard deviation;
- ``first``/``last`` are the values of the earliest/latest point;
- ``integral`` (value x milliseconds) is the integral over the window of the line through the
  tag's points in time order, wherever consecutive points are at most ``max_gap_ms`` apart
  (default and at most the base window): the segments between the window's own points, plus
  the parts of the segments to the point just before it and just after it, split at the window
  bounds by linear interpolation. Integrals therefore add up: consecutive windows sum to their
  rollup and to the trapezoid over the whole series. ``twa`` (time-weighted mean) is the
  integral divided by the time it covers, or ``mean`` when it covers none;
- ``energy`` is reported for power units only: ``integral`` in unit-hours (kW -> kWh).

A base window is emitted when the watermark has passed it and, for each of its tags, the point
after it is final (the tag has passed that point by the allowed lateness) or the watermark has
passed the tag's last point by ``max_gap_ms``; a point that still moves a neighbour's tail
later re-emits that window.

Windows closed by the watermark carry ``closed_by="watermark"``; windows closed because the
input ended (bounded replay, Ctrl-C) carry ``closed_by="eof"``: they hold every point that
arrived, but a restarted live flow may re-emit them with more points under the same key.

History: a batch that spans many windows after every window held (a replay of a file or a
topic) is closed in bulk: summaries, heads and tails, the decisions to hold back, keep or
forget each window, and the rollups, for all its windows at once from arrays, with the same
bits as closing them one by one. With ``blocks=True`` (the dataflow operator) the windows of
one size closed together leave as one :class:`WindowAggregates` block.

Lateness: the watermark is ``max event time seen - allowed_lateness`` and, when
``idle_close`` is on, also advances with wall time since that event, so windows of idle tags
close. A point whose window already closed is *late*: it is returned to the caller (who puts
it on the late stream) and counted, never dropped silently.
"""

from __future__ import annotations

import itertools
import operator
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt

from operators._state import (
    LEADING_TRUE,
    PickleCopy,
    TableCache,
    TagRegistry,
    reorder,
    stable_order,
    tag_order,
)
from operators.errors import RuleError
from wire.records import (
    FINAL_ALL_MS,
    PointBatch,
    TagRef,
    WindowAggregates,
    ms_to_datetime,
    to_ms,
)

__all__ = [
    "Summary",
    "TumblingAggregator",
    "combine",
    "combine_many",
    "finalize",
    "summarize",
    "summarize_many",
]

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
Edge = tuple[npt.NDArray[np.int32], I64, F64]  # tag ids (sorted), times, values
_DAY_MS = 86_400_000
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()  # n-day windows count whole days from here


@dataclass(frozen=True, slots=True, eq=False)
class Summary:
    """Per-tag partial aggregates of one window (one row per tag id, sorted by id)."""

    gid: npt.NDArray[np.int32]
    count: I64
    sum: F64
    min: F64
    max: F64
    m2: F64
    first_ts: I64
    first: F64
    last_ts: I64
    last: F64
    integral: F64  # between the window's own points (segments up to max_gap)
    covered: I64  # ms those segments cover
    head: F64  # from the window start to the first point, toward the point before it
    head_ms: I64
    tail: F64  # from the last point to the window end, toward the point after it
    tail_ms: I64

    def __len__(self) -> int:
        return len(self.gid)

    def take(self, rows: Any) -> Summary:
        """Return the rows ``rows`` selects (a slice, indices or a mask)."""
        return Summary(*(getattr(self, f)[rows] for f in Summary.__slots__))

    @staticmethod
    def concat(parts: list[Summary]) -> Summary:
        """Return the rows of ``parts``, one after the other."""
        return Summary(*(np.concatenate([getattr(p, f) for p in parts]) for f in Summary.__slots__))


def _segments(keys: npt.NDArray[Any]) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """Return start and end indices of runs of equal values in sorted ``keys``."""
    n = len(keys)
    if not n:
        return np.empty(0, np.intp), np.empty(0, np.intp)
    starts = np.flatnonzero(np.concatenate((LEADING_TRUE, keys[1:] != keys[:-1])))
    ends = np.append(starts[1:], n).astype(np.intp)
    return starts, ends


def _runs(keys: I64) -> tuple[npt.NDArray[np.intp], list[tuple[int, int, int]]]:
    """Stable order of ``keys`` and its runs of equal keys as ``(key, start, end)``.

    One sort, however many runs: each run's points stay in input order.
    """
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    starts, ends = _segments(ordered)
    return order, list(zip(ordered[starts].tolist(), starts.tolist(), ends.tolist(), strict=True))


def _empty() -> Summary:
    e_i, e_f = np.empty(0, np.int64), np.empty(0, np.float64)
    return Summary(
        np.empty(0, np.int32),
        e_i,
        e_f,
        e_f,
        e_f,
        e_f,
        e_i,
        e_f,
        e_i,
        e_f,
        e_f,
        e_i,
        e_f,
        e_i,
        e_f,
        e_i,
    )


def _stats(key: I64, g: npt.NDArray[np.int32], t: I64, x: F64, max_gap: int | None) -> Summary:
    """Summarise points sorted by (key, time); one row per run of equal ``key``."""
    starts, ends = _segments(key)
    if not len(starts):
        return _empty()
    count = (ends - starts).astype(np.int64)
    total = np.add.reduceat(x, starts)
    mean = total / count
    dev = x - np.repeat(mean, count)
    m2 = np.add.reduceat(dev * dev, starts)
    dt = np.diff(t)
    inside = key[1:] == key[:-1]
    if max_gap is not None:
        inside &= dt <= max_gap
    seg = np.where(inside, (x[1:] + x[:-1]) * 0.5 * dt.astype(np.float64), 0.0)
    # + 0.0: no -0.0 (a run of -0.0 samples), as combining summaries gives: the same sign of
    # zero however the windows were put together.
    integral = np.add.reduceat(np.append(seg, 0.0), starts) + 0.0
    covered = np.add.reduceat(np.append(np.where(inside, dt, 0), 0), starts)
    zeros_f, zeros_i = np.zeros(len(starts)), np.zeros(len(starts), np.int64)
    return Summary(
        gid=g[starts],
        count=count,
        sum=total,
        min=np.minimum.reduceat(x, starts),
        max=np.maximum.reduceat(x, starts),
        m2=m2,
        first_ts=t[starts],
        first=x[starts],
        last_ts=t[ends - 1],
        last=x[ends - 1],
        integral=integral,
        covered=covered.astype(np.int64),
        head=zeros_f,
        head_ms=zeros_i,
        tail=zeros_f,
        tail_ms=zeros_i,
    )


def summarize(
    gid: npt.NDArray[np.int32], ts: I64, value: F64, max_gap: int | None = None
) -> Summary:
    """Summarise raw points of one window per tag; input order only matters for ties.

    Segments between consecutive points longer than ``max_gap`` ms are not integrated.
    """
    order = stable_order(gid, ts)
    g = gid[order]
    return _stats(g.astype(np.int64), g, ts[order], value[order], max_gap)


def _find(keys: I64, wanted: I64, guess: npt.NDArray[np.intp]) -> npt.NDArray[np.intp]:
    """Position of each ``wanted`` in sorted ``keys`` (clipped to a valid index) if present.

    ``guess`` is where it usually is (the same tag a window later or earlier): checked first,
    searched only where it misses.
    """
    n = len(keys)
    pos = np.clip(guess, 0, n - 1)
    miss = keys[pos] != wanted
    if miss.any():
        pos[miss] = np.minimum(np.searchsorted(keys, wanted[miss]), n - 1)
    return pos


def _split(full: Summary, owner: I64, n: int) -> list[Summary]:
    """Cut a summary whose rows are sorted by ``owner`` (0..n-1) into one summary each."""
    bounds = np.searchsorted(owner, np.arange(n + 1)).tolist()
    cols = [getattr(full, f) for f in Summary.__slots__]
    return [Summary(*(c[a:b] for c in cols)) for a, b in itertools.pairwise(bounds)]


def summarize_many(
    parts: list[tuple[npt.NDArray[np.int32], I64, F64]], max_gap: int | None = None
) -> list[Summary]:
    """Return :func:`summarize` of many point sets, computed with one sort for all.

    A history replay closes thousands of windows per batch: per-window numpy calls would
    dominate.
    """
    if len(parts) == 1:
        return [summarize(*parts[0], max_gap)]
    rows, row_part = _stats_of_parts(parts, max_gap)
    return _split(rows, row_part, len(parts))


def _stats_of_parts(
    parts: list[tuple[npt.NDArray[np.int32], I64, F64]], max_gap: int | None
) -> tuple[Summary, I64]:
    """Summarise every point set per tag, with one sort for all.

    Returns the rows, sorted by (part, tag), and the part of each row.
    """
    if not parts:
        return _empty(), _EMPTY_TS
    owner = np.repeat(np.arange(len(parts), dtype=np.int64), [len(p[0]) for p in parts])
    gid = np.concatenate([p[0] for p in parts])
    ts = np.concatenate([p[1] for p in parts])
    value = np.concatenate([p[2] for p in parts])
    order = stable_order(owner, gid, ts)
    g, o = gid[order], owner[order]
    key = o * (int(g.max()) + 1 if len(g) else 1) + g
    return _stats(key, g, ts[order], value[order], max_gap), o[_segments(key)[0]]


def combine(parts: list[Summary], max_gap: int | None = None) -> Summary:
    """Combine summaries of consecutive windows into the summary of their union.

    ``parts`` must be in time order; the result equals :func:`summarize` over all points. The
    union's head is its first part's and its tail its last part's (per tag).
    """
    if len(parts) == 1:
        return parts[0]
    return combine_many([parts], max_gap)[0]


def combine_many(groups: list[list[Summary]], max_gap: int | None = None) -> list[Summary]:
    """:func:`combine` of each group, all groups at once (one sort for all)."""
    flat = [p for grp in groups for p in grp]
    if not flat:
        return [_empty() for _ in groups]
    owner_of_part = np.repeat(np.arange(len(groups), dtype=np.int64), [len(g) for g in groups])
    sizes = [len(p) for p in flat]
    seq = np.repeat(np.arange(len(flat), dtype=np.int64), sizes)
    owner = np.repeat(owner_of_part, sizes)
    cat = Summary.concat(flat)
    return _combine_rows(cat, seq, owner, len(groups), max_gap)


def _combine_rows(
    cat: Summary, seq: I64, owner: I64, n: int, max_gap: int | None = None
) -> list[Summary]:
    """Combine rows of partial summaries: per ``owner`` and tag, in ``seq`` (time) order."""
    full, row_owner = _combine_full(cat, seq, owner, max_gap)
    return _split(full, row_owner, n)


_COMBINED = (
    "count", "sum", "min", "max", "m2", "first_ts", "first", "last_ts", "last", "integral",
    "covered",
)  # fmt: skip


def _combine_full(
    cat: Summary, seq: I64, owner: I64, max_gap: int | None = None
) -> tuple[Summary, I64]:
    """:func:`_combine_rows` as one summary sorted by (owner, tag), and each row's owner."""
    if not len(cat):
        return _empty(), _EMPTY_TS
    key = owner * (int(cat.gid.max()) + 1) + cat.gid
    if bool((key[1:] > key[:-1]).all()):
        # Already in order, one part per owner and tag (a window of one slice, as 1-minute
        # samples in 1-minute windows are): the same arithmetic without a sort or reductions
        # (a reduction over one element is that element).
        spread = cat.count * (cat.sum / cat.count - cat.sum / cat.count) ** 2
        cols = {f: getattr(cat, f) for f in Summary.__slots__}
        cols.update(
            m2=cat.m2 + spread,
            integral=cat.integral + 0.0,
            covered=(cat.covered + 0).astype(np.int64),
        )
        return Summary(**cols), owner
    order = stable_order(owner, cat.gid, seq)
    # Whole columns only where every row counts; the rest at each run's first or last row.
    c = {f: getattr(cat, f)[order] for f in _COMBINED}
    key = key[order]
    starts, ends = _segments(key)
    at_first, at_last = order[starts], order[ends - 1]
    count = np.add.reduceat(c["count"], starts)
    total = np.add.reduceat(c["sum"], starts)
    mean = total / count
    part_mean = c["sum"] / c["count"]
    spread = c["count"] * (part_mean - np.repeat(mean, ends - starts)) ** 2
    m2 = np.add.reduceat(c["m2"] + spread, starts)
    dt = c["first_ts"][1:] - c["last_ts"][:-1]
    inside = key[1:] == key[:-1]
    if max_gap is not None:
        inside &= dt <= max_gap
    gap = np.where(inside, (c["last"][:-1] + c["first"][1:]) * 0.5 * dt, 0.0)
    integral = np.add.reduceat(c["integral"] + np.append(gap, 0.0), starts)
    covered = np.add.reduceat(c["covered"] + np.append(np.where(inside, dt, 0), 0), starts)
    full = Summary(
        gid=cat.gid[at_first],
        count=count,
        sum=total,
        min=np.minimum.reduceat(c["min"], starts),
        max=np.maximum.reduceat(c["max"], starts),
        m2=m2,
        first_ts=c["first_ts"][starts],
        first=c["first"][starts],
        last_ts=c["last_ts"][ends - 1],
        last=c["last"][ends - 1],
        integral=integral,
        covered=covered.astype(np.int64),
        head=cat.head[at_first],
        head_ms=cat.head_ms[at_first],
        tail=cat.tail[at_last],
        tail_ms=cat.tail_ms[at_last],
    )
    return full, owner[at_first]


def _window_summaries(
    windows: list[tuple[I64, npt.NDArray[np.int32], I64, F64]], max_gap: int | None = None
) -> list[Summary]:
    """Summaries of whole windows from their raw points ``(slice start, tag id, time, value)``.

    Windows come in time order (slice starts rise from one window to the next). The same
    numbers, bit for bit, as summarising each slice (its points in input order) and combining
    the slices in time order: the same sorts and sums in the same order, without an object per
    slice.
    """
    sizes = [len(w[1]) for w in windows]
    if not sum(sizes):
        return [_empty() for _ in windows]
    win = np.repeat(np.arange(len(windows), dtype=np.int64), sizes)
    key = np.concatenate([w[0] for w in windows])
    gid = np.concatenate([w[1] for w in windows])
    ts = np.concatenate([w[2] for w in windows])
    value = np.concatenate([w[3] for w in windows])
    full, owner = _window_rows(key, win, gid, ts, value, max_gap)
    return _split(full, owner, len(windows))


def _window_rows(
    key: I64, win: I64, gid: npt.NDArray[np.int32], ts: I64, value: F64, max_gap: int | None
) -> tuple[Summary, I64]:
    """:func:`_window_summaries` of points with slice starts ``key`` and window numbers ``win``.

    Returns one summary sorted by (window, tag) and each row's window; windows in time order,
    points of one slice in arrival order.
    """
    order = reorder(key, gid, ts - key)
    g, t, x = gid, ts, value
    if order is not None:
        key, g, t, x, win = key[order], gid[order], ts[order], value[order], win[order]
    new = np.concatenate((LEADING_TRUE, key[1:] != key[:-1]))
    part = np.cumsum(new) - 1
    part_tag = (part * (int(g.max()) + 1) + g).astype(np.int64, copy=False)
    rows = _stats(part_tag, g, t, x, max_gap)
    row_part = part[_segments(part_tag)[0]]
    return _combine_full(rows, row_part, win[new][row_part], max_gap)


def finalize(
    summary: Summary,
    *,
    window_ms: int,
    start_ms: int,
    tags: list[TagRef],
    closed_by: str = "watermark",
    revision: int = 0,
    end_ms: int | None = None,
    zone: str | None = None,
) -> WindowAggregates:
    """Turn a summary into the aggregates of its window (mean, std, time-weighted mean)."""
    return finalize_many(
        [summary],
        window_ms=window_ms,
        starts=[start_ms],
        tags=tags,
        closed_by=closed_by,
        revisions=[revision],
        ends=[end_ms],
        zone=zone,
    )[0]


def finalize_many(
    summaries: list[Summary],
    *,
    window_ms: int,
    starts: list[int],
    tags: list[TagRef],
    closed_by: str,
    revisions: list[int],
    ends: list[int | None],
    zone: str | None,
    final_before_ms: int | None = None,
) -> list[WindowAggregates]:
    """Return :func:`finalize` of many windows of one size, computed together.

    Element-wise, so the same bits as one at a time; a replay closes thousands of windows per
    batch.
    """
    sizes = [len(x) for x in summaries]
    cat = Summary.concat(summaries)
    mean, std, twa, integral = _final_columns(cat)
    refs = [tags[i] for i in cat.gid.tolist()]
    out = []
    lo = 0
    for s, size, start, revision, end in zip(
        summaries, sizes, starts, revisions, ends, strict=True
    ):
        hi = lo + size
        out.append(
            WindowAggregates(
                window_ms=window_ms,
                start_ms=start,
                tags=tuple(refs[lo:hi]),
                count=s.count,
                min=s.min,
                max=s.max,
                mean=mean[lo:hi],
                std=std[lo:hi],
                sum=s.sum,
                first=s.first,
                last=s.last,
                first_ts=s.first_ts,
                last_ts=s.last_ts,
                twa=twa[lo:hi],
                integral=integral[lo:hi],
                closed_by=closed_by,
                revision=revision,
                end=end,
                zone=zone,
                final_before_ms=final_before_ms,
            )
        )
        lo = hi
    return out


def _tags_of(tags: list[TagRef], gid: npt.NDArray[np.int32]) -> tuple[TagRef, ...]:
    """Return the tag of each id in ``gid``."""
    if len(gid) < 2:
        return tuple(tags[i] for i in gid.tolist())
    got: tuple[TagRef, ...] = operator.itemgetter(*gid.tolist())(tags)
    return got


def _final_columns(rows: Summary) -> tuple[F64, F64, F64, F64]:
    """Return ``(mean, std, twa, integral)`` of summary rows with their heads and tails."""
    span = (rows.covered + rows.head_ms + rows.tail_ms).astype(np.float64)
    mean = rows.sum / rows.count
    integral = rows.integral + rows.head + rows.tail
    with np.errstate(invalid="ignore", divide="ignore"):
        twa = np.where(span > 0, integral / np.where(span > 0, span, 1.0), mean)
    std = np.sqrt(np.maximum(rows.m2 / rows.count, 0.0))
    return mean, std, twa, integral


def _override(base: Summary | None, exact: Summary) -> Summary:
    """Return ``base`` with the rows of ``exact`` replacing (or adding) those tag ids."""
    if base is None or not len(base):
        return exact
    if not len(exact):
        return base
    keep = ~np.isin(base.gid, exact.gid, assume_unique=True)
    gid = np.concatenate([base.gid[keep], exact.gid])
    order = np.argsort(gid, kind="stable")
    cols = {
        f: np.concatenate([getattr(base, f)[keep], getattr(exact, f)])[order]
        for f in Summary.__slots__
    }
    return Summary(**cols)


_EMPTY_GID = np.empty(0, np.int32)
_EMPTY_TS = np.empty(0, np.int64)
_EMPTY_VAL = np.empty(0, np.float64)


@dataclass(slots=True)
class _Slice:
    """Raw points of one slice of a base window, and their summary once computed.

    ``base`` holds the summary rows of tags whose raw points were released (their window
    closed and the tag moved past its lateness); the raw points left belong to tags that may
    still send points into the slice, and their rows are recomputed from them.
    """

    gid: list[npt.NDArray[np.int32]] = field(default_factory=list)
    ts: list[I64] = field(default_factory=list)
    value: list[F64] = field(default_factory=list)
    base: Summary | None = None
    cached: Summary | None = None
    max_gap: int | None = None

    def add(self, gid: npt.NDArray[np.int32], ts: I64, value: F64) -> None:
        self.gid.append(gid)
        self.ts.append(ts)
        self.value.append(value)
        self.cached = None

    def raw(self) -> tuple[npt.NDArray[np.int32], I64, F64]:
        """Return the raw points (tag ids, times, values) still held."""
        return self._compact()

    def _compact(self) -> tuple[npt.NDArray[np.int32], I64, F64]:
        if len(self.gid) > 1:  # later summaries reuse the concatenation
            self.gid = [np.concatenate(self.gid)]
            self.ts = [np.concatenate(self.ts)]
            self.value = [np.concatenate(self.value)]
        if not self.gid:
            return _EMPTY_GID, _EMPTY_TS, _EMPTY_VAL
        return self.gid[0], self.ts[0], self.value[0]

    def summary(self) -> Summary:
        if self.cached is None:
            gid, ts, value = self._compact()
            self.cached = _override(self.base, summarize(gid, ts, value, self.max_gap))
        return self.cached

    def release(self, live: npt.NDArray[np.bool_]) -> None:
        """Keep raw points only of tags flagged in ``live`` (indexed by tag id)."""
        full = self.summary()
        gid, ts, value = self._compact()
        if len(gid):
            keep = live[gid]
            self.gid, self.ts, self.value = [gid[keep]], [ts[keep]], [value[keep]]
        self.base = full
        self.cached = full

    def copy(self) -> _Slice:
        # Arrays are never written in place, so copies share them.
        return _Slice(
            list(self.gid), list(self.ts), list(self.value), self.base, self.cached, self.max_gap
        )


def _summarize_slices(slices: list[_Slice]) -> None:
    """Compute the summaries of ``slices`` (none cached) with one sort for all."""
    if len(slices) < 2:
        for sl in slices:
            sl.summary()
        return
    raws = [sl.raw() for sl in slices]
    for sl, exact in zip(slices, summarize_many(raws, slices[0].max_gap), strict=True):
        sl.cached = _override(sl.base, exact)


@dataclass(slots=True)
class _Win:
    """One base window: its slices (by slice start) and the revision last emitted.

    Once closed, ``held`` lists the tag ids that could still reopen it when raw points were
    last released; when one of them moves on, the release is repeated.
    """

    sliced: dict[int, _Slice] = field(default_factory=dict)
    revision: int = -1  # -1: never emitted
    held: npt.NDArray[np.intp] = field(default_factory=lambda: np.empty(0, np.intp))
    tag_ids: npt.NDArray[np.int32] | None = None  # cache of gids(); None after a change
    max_gap: int | None = None
    # Once emitted: the neighbours its head and tail were computed from (tag ids sorted): the
    # last points of the window before and the first points of the window after.
    prev: Edge | None = None
    nxt: Edge | None = None
    # Points added and not yet put in their slices, with their slice starts: a window of
    # history is usually summarised whole, straight from these, without a slice object.
    pending: list[tuple[I64, npt.NDArray[np.int32], I64, F64]] = field(default_factory=list)

    @property
    def slices(self) -> dict[int, _Slice]:
        """The slices by start, with every point added so far."""
        if self.pending:
            key, gid, ts, value = (np.concatenate(c) for c in zip(*self.pending, strict=True))
            self.pending = []
            order, runs = _runs(key)  # arrival order within a slice
            gid, ts, value = gid[order], ts[order], value[order]
            for k, lo, hi in runs:
                sl = self.sliced.get(k)
                if sl is None:
                    sl = self.sliced[k] = _Slice(max_gap=self.max_gap)
                sl.add(gid[lo:hi], ts[lo:hi], value[lo:hi])
        return self.sliced

    def raw_only(self) -> bool:
        """Return True while no slice has released raw points into a summary."""
        return all(sl.base is None for sl in self.sliced.values())

    def raw_points(self) -> tuple[I64, npt.NDArray[np.int32], I64, F64]:
        """Return every raw point held as ``(slice start, tag id, time, value)``.

        Points of one slice are in arrival order.
        """
        chunks = [
            (np.full(len(g), k, np.int64), g, t, v)
            for k, sl in self.sliced.items()
            for g, t, v in (sl.raw(),)
        ]
        chunks += self.pending
        if len(chunks) == 1:
            return chunks[0]
        key, gid, ts, value = (np.concatenate(c) for c in zip(*chunks, strict=True))
        return key, gid, ts, value

    def parts(self) -> list[Summary]:
        """Summaries of the slices, in time order."""
        return [self.slices[k].summary() for k in sorted(self.slices)]

    def summary(self) -> Summary:
        return combine(self.parts(), self.max_gap)

    def firsts(self) -> Edge:
        """Return the earliest point of each tag (slices are in time order, never overlap)."""
        parts = self.parts()
        gid = np.concatenate([p.gid for p in parts])
        ts = np.concatenate([p.first_ts for p in parts])
        value = np.concatenate([p.first for p in parts])
        uniq, idx = np.unique(gid, return_index=True)
        return uniq, ts[idx], value[idx]

    def release(self, live: npt.NDArray[np.bool_]) -> None:
        """Keep raw points only of tags flagged in ``live`` (indexed by tag id)."""
        for sl in self.slices.values():
            sl.release(live)
        self.held = np.flatnonzero(live)
        if len(self.sliced) > 1 and not any(len(sl.raw()[0]) for sl in self.sliced.values()):
            # Every tag with points here has passed it: its rows are final, and a point can
            # only come from a tag without rows here (a row of its own). One summary for the
            # window instead of a dozen slices: a snapshot pickles every array it holds
            # (a 20-tag site's closed windows were 300 KB per epoch).
            whole = combine(self.parts(), self.max_gap)
            self.sliced = {min(self.sliced): _Slice(base=whole, cached=whole, max_gap=self.max_gap)}

    def copy(self) -> _Win:
        slices = {k: v.copy() for k, v in self.sliced.items()}
        return _Win(
            slices,
            self.revision,
            self.held,
            self.tag_ids,
            self.max_gap,
            self.prev,
            self.nxt,
            list(self.pending),
        )

    def add(self, key: I64, gid: npt.NDArray[np.int32], ts: I64, value: F64) -> None:
        """Add points; ``key`` holds the start of each point's slice."""
        self.pending.append((key, gid, ts, value))
        self.tag_ids = None

    def gids(self) -> npt.NDArray[np.int32]:
        """Tag ids with points in this window."""
        if self.tag_ids is None:
            self.tag_ids = np.unique(
                np.concatenate([sl.summary().gid for sl in self.slices.values()])
            )
        return self.tag_ids


@dataclass(slots=True)
class _Fresh:
    """Points of a batch in windows after every window held (a history replay's batch).

    Sorted by window, arrival order within one. Lives only inside one :meth:`add` call: the
    windows it can close at once are closed straight from these arrays, without a window
    object each; the others become windows like any.
    """

    win: I64  # window start of each point
    slc: I64  # slice start of each point
    gid: npt.NDArray[np.int32]
    ts: I64
    value: F64
    starts: I64 = field(init=False)  # the windows, in time order
    bounds: npt.NDArray[np.intp] = field(init=False)  # points of window i: bounds[i]:bounds[i+1]

    def __post_init__(self) -> None:
        cuts = np.flatnonzero(self.win[1:] != self.win[:-1]) + 1
        self.bounds = np.concatenate(([0], cuts, [len(self.win)])).astype(np.intp)
        self.starts = self.win[self.bounds[:-1]]

    def firsts(self, start: int) -> Edge | None:
        """Return the earliest point of each tag in the window at ``start``, if it is here."""
        i = int(np.searchsorted(self.starts, start))
        if i == len(self.starts) or int(self.starts[i]) != start:
            return None
        a, b = int(self.bounds[i]), int(self.bounds[i + 1])
        order = stable_order(self.gid[a:b], self.ts[a:b])
        g = self.gid[a:b][order]
        first = _segments(g)[0]
        return g[first], self.ts[a:b][order][first], self.value[a:b][order][first]

    def after(self, n: int) -> _Fresh | None:
        """Return the windows from the ``n``-th on, or None when there are none."""
        if n >= len(self.starts):
            return None
        a = int(self.bounds[n])
        return _Fresh(self.win[a:], self.slc[a:], self.gid[a:], self.ts[a:], self.value[a:])


@dataclass(slots=True)
class _Rollup:
    parts: dict[int, Summary] = field(default_factory=dict)
    revision: int = -1
    tag_ids: npt.NDArray[np.int32] | None = None  # cache of gids(); None after a change

    def put(self, start: int, summary: Summary) -> None:
        """Set the summary of the base window at ``start``."""
        self.parts[start] = summary
        self.tag_ids = None

    def gids(self) -> npt.NDArray[np.int32]:
        """Tag ids with points in this rollup window."""
        if self.tag_ids is None:
            self.tag_ids = np.unique(np.concatenate([p.gid for p in self.parts.values()]))
        return self.tag_ids


def _match(gid: npt.NDArray[np.int32], edge: Edge | None) -> tuple[npt.NDArray[np.bool_], I64, F64]:
    """For each tag id, whether ``edge`` has it, and its time and value there."""
    return _match_many(gid, np.zeros(len(gid), np.int64), [edge])


def _overlay(base: Edge | None, top: Edge | None) -> Edge | None:
    """``top``'s edge points, plus ``base``'s for tags ``top`` lacks.

    A neighbour window that was forgotten and started afresh holds only its new tags; the
    edges a window remembers from before keep the other tags' heads and tails.
    """
    if base is None or not len(base[0]):
        return top
    if top is None or not len(top[0]):
        return base
    missing = ~np.isin(base[0], top[0], assume_unique=True)
    if not missing.any():
        return top
    gid = np.concatenate([top[0], base[0][missing]])
    order = np.argsort(gid, kind="stable")
    return (
        gid[order],
        np.concatenate([top[1], base[1][missing]])[order],
        np.concatenate([top[2], base[2][missing]])[order],
    )


def _match_many(
    gid: npt.NDArray[np.int32], owner: I64, edges: list[Edge | None]
) -> tuple[npt.NDArray[np.bool_], I64, F64]:
    """:func:`_match` of rows owned by several windows, each against its own edge.

    Row ``r`` is looked up in ``edges[owner[r]]``; one search for all rows.
    """
    full = [e for e in edges if e is not None and len(e[0])]
    n = len(gid)
    if not full:
        return np.zeros(n, np.bool_), np.zeros(n, np.int64), np.zeros(n, np.float64)
    e_owner = np.repeat(
        np.array([i for i, e in enumerate(edges) if e is not None and len(e[0])], np.int64),
        [len(e[0]) for e in full],
    )
    e_gid = np.concatenate([e[0] for e in full]).astype(np.int64)
    span = int(max(e_gid.max(), gid.max() if n else 0)) + 1
    e_key = e_owner * span + e_gid  # sorted: owners ascend, tag ids ascend within each
    key = owner * span + gid
    pos = np.minimum(np.searchsorted(e_key, key), len(e_key) - 1)
    e_ts = np.concatenate([e[1] for e in full])
    e_val = np.concatenate([e[2] for e in full])
    return e_key[pos] == key, e_ts[pos], e_val[pos]


def _with_edges(
    sums: list[Summary],
    starts: list[int],
    window_ms: int,
    prevs: list[Edge | None],
    nxts: list[Edge | None],
    max_gap: int,
) -> list[Summary]:
    """Return each summary with its head (window start -> first point) and tail (last point -> end).

    The line from the point before the window (in ``prevs[i]``) to its first point is split at
    the window start; the line from its last point to the point after it (in ``nxts[i]``), at
    the window end. Segments longer than ``max_gap`` ms are not interpolated. All windows are
    computed together.
    """
    sizes = [len(x) for x in sums]
    owner = np.repeat(np.arange(len(sums), dtype=np.int64), sizes)
    gid = np.concatenate([x.gid for x in sums])
    start = np.repeat(np.asarray(starts, np.int64), sizes)
    head, head_ms, tail, tail_ms = _heads_and_tails(
        (
            np.concatenate([x.first_ts for x in sums]),
            np.concatenate([x.first for x in sums]),
            np.concatenate([x.last_ts for x in sums]),
            np.concatenate([x.last for x in sums]),
        ),
        start,
        window_ms,
        _match_many(gid, owner, prevs),
        _match_many(gid, owner, nxts),
        max_gap,
    )
    out = []
    a = 0
    for x, size in zip(sums, sizes, strict=True):
        b = a + size
        out.append(
            Summary(
                x.gid,
                x.count,
                x.sum,
                x.min,
                x.max,
                x.m2,
                x.first_ts,
                x.first,
                x.last_ts,
                x.last,
                x.integral,
                x.covered,
                head[a:b],
                head_ms[a:b],
                tail[a:b],
                tail_ms[a:b],
            )
        )
        a = b
    return out


def _heads_and_tails(
    ends: tuple[I64, F64, I64, F64],
    start: I64,
    window_ms: int,
    prev: tuple[npt.NDArray[np.bool_], I64, F64],
    nxt: tuple[npt.NDArray[np.bool_], I64, F64],
    max_gap: int,
) -> tuple[F64, I64, F64, I64]:
    """Heads and tails of summary rows from their neighbours; see :func:`_with_edges`.

    ``ends`` holds each row's ``(first_ts, first, last_ts, last)`` and ``start`` its window
    start; ``prev`` and ``nxt`` say, per row, whether the tag has a point just before (after)
    the window, and its time and value.
    """
    first_ts, first, last_ts, last = ends
    has, p_ts, p_val = prev
    end = start + window_ms
    dt = (first_ts - p_ts).astype(np.float64)
    ok = has & (dt > 0) & (dt <= max_gap) & (first_ts > start)
    with np.errstate(invalid="ignore", divide="ignore"):
        at_start = p_val + (first - p_val) * (start - p_ts) / np.where(ok, dt, 1.0)
    head_ms = np.where(ok, first_ts - start, 0).astype(np.int64)
    head = np.where(ok, (at_start + first) * 0.5 * head_ms, 0.0)
    has, n_ts, n_val = nxt
    dt = (n_ts - last_ts).astype(np.float64)
    ok = has & (dt > 0) & (dt <= max_gap) & (n_ts >= end)
    with np.errstate(invalid="ignore", divide="ignore"):
        at_end = last + (n_val - last) * (end - last_ts) / np.where(ok, dt, 1.0)
    tail_ms = np.where(ok, end - last_ts, 0).astype(np.int64)
    tail = np.where(ok, (last + at_end) * 0.5 * tail_ms, 0.0)
    return head, head_ms, tail, tail_ms


class TumblingAggregator(PickleCopy):
    """Event-time tumbling windows over point batches for one shard (site) of the stream.

    Call :meth:`add` with each batch, :meth:`advance` when wall time passes, :meth:`flush` at
    end of input. All three return the windows that closed (or changed), oldest first.

    Lateness is decided per tag, from the tag's own order: a point is late when its tag has
    already delivered a point at or past ``window end + allowed_lateness``. Windows close (and
    are emitted) when the shard watermark passes their end; the watermark is the minimum over
    input sources (e.g. Kafka partitions) of the newest event time each delivered, minus the
    allowed lateness, so a fast partition cannot close windows a slow one still feeds. A point
    that is on time for its tag but whose window already closed reopens it: the window is
    re-emitted with ``revision + 1`` (same natural key; sinks upsert). A closed window is kept
    until every tag with points in it has passed its end + lateness (so memory follows the
    slowest tag) and the shard's newest point is ``max_source_lag_ms`` past that (so a source
    that lags, or starts late, still finds the window with every other tag's rows); a tag
    that had no point in a forgotten window and then sends one starts it afresh with its own
    rows. Final rows therefore depend only on each tag's own order, never on batching or on
    how sources interleave, as long as no source lags the shard's newest point by more than
    ``max_source_lag_ms``: a replay ends with the same rows as the live run.
    ``reopen_horizon_ms`` is accepted and ignored (it used to bound reopening by the
    watermark, which made results depend on the interleaving).
    """

    def __init__(
        self,
        *,
        window_ms: int = 60_000,
        rollup_ms: tuple[int, ...] = (900_000,),
        allowed_lateness_ms: int = 0,
        idle_close: bool = True,
        reopen_horizon_ms: int | None = None,
        slice_ms: int | None = None,
        zone: str = "UTC",
        max_gap_ms: int | None = None,
        max_source_lag_ms: int = 300_000,
        blocks: bool = False,
    ) -> None:
        if window_ms <= 0:
            msg = f"window_ms must be positive, got {window_ms}"
            raise RuleError(msg)
        self.max_gap_ms = window_ms if max_gap_ms is None else max_gap_ms
        if not 0 < self.max_gap_ms <= window_ms:
            msg = (
                f"max_gap_ms {max_gap_ms} must be positive and at most window_ms {window_ms} "
                "(a longer gap would span a window without samples)"
            )
            raise RuleError(msg)
        self.zone = None if zone == "UTC" else zone
        self._tz = None if self.zone is None else ZoneInfo(self.zone)
        self._midnights: dict[int, int] = {}
        if self._tz is not None and any(r % _DAY_MS == 0 for r in rollup_ms):
            if window_ms % _DAY_MS == 0:
                msg = (
                    f"base windows of whole days cannot follow the time zone {zone}: use "
                    "a shorter window_ms with a rollup of whole days"
                )
                raise RuleError(msg)
            # Local midnights must fall on base window boundaries (offsets are whole
            # quarter hours, whole hours in most zones).
            for month in range(1, 13):
                offset = datetime(2026, month, 1, tzinfo=self._tz).utcoffset()
                if offset is not None and int(offset.total_seconds() * 1000) % window_ms:
                    msg = (
                        f"window_ms {window_ms} does not divide the UTC offset of {zone} "
                        f"({offset}): local days could not be made of whole base windows"
                    )
                    raise RuleError(msg)
        for r in rollup_ms:
            if r <= window_ms or r % window_ms:
                msg = f"rollup window {r} ms must be a multiple of the base window {window_ms} ms"
                raise RuleError(msg)
        if allowed_lateness_ms < 0:
            msg = f"allowed_lateness_ms must be >= 0, got {allowed_lateness_ms}"
            raise RuleError(msg)
        if max_source_lag_ms < 0:
            msg = f"max_source_lag_ms must be >= 0, got {max_source_lag_ms}"
            raise RuleError(msg)
        self.max_source_lag_ms = max_source_lag_ms
        self.window_ms = window_ms
        self.rollup_ms = tuple(sorted(set(rollup_ms)))
        self.allowed_lateness_ms = allowed_lateness_ms
        self.idle_close = idle_close
        self.reopen_horizon_ms = window_ms if reopen_horizon_ms is None else reopen_horizon_ms
        if slice_ms is None:
            slice_ms = window_ms // 12 if window_ms % 12 == 0 else window_ms
        if slice_ms <= 0 or window_ms % slice_ms:
            msg = f"slice_ms {slice_ms} must divide the window {window_ms} ms"
            raise RuleError(msg)
        self.slice_ms = slice_ms
        self._reg = TagRegistry()
        self._luts: TableCache[npt.NDArray[np.int32]] = TableCache(self._gids)
        self._tag_max = np.empty(0, np.int64)
        self._open: dict[int, _Win] = {}
        self._closed: dict[int, _Win] = {}
        self._rollups: dict[tuple[int, int], _Rollup] = {}
        self._closed_through: int | None = None
        # The last points of the newest closed base window: the next window's heads.
        self._last_closed: tuple[int, Edge] | None = None
        self._held: int | None = None  # start of a window due but waiting for its tails
        self._source_max: dict[str, int] = {}
        self._max_event_ms: int | None = None
        self._wall_at_max_ms = 0
        self.points_in = 0
        self.points_late = 0
        self.reemitted = 0
        self.blocks = blocks

    # Emit windows closed together as one block (WindowAggregates with ``starts``), not one
    # object per window. Class defaults: snapshots taken before these existed lack them.
    blocks: bool = False
    _fast: _Fresh | None = None  # only set inside add(): see _Fresh

    def __deepcopy__(self, memo: dict[int, Any]) -> TumblingAggregator:
        """Copy for Bytewax's per-epoch snapshot: containers are copied, arrays shared.

        Arrays in the state are never written in place (except the small per-tag maxima,
        copied here), so a snapshot costs a walk over windows and slices, not a copy of the
        buffered points.
        """
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new._reg = self._reg.copy()
        new._luts = TableCache(new._gids)
        new._tag_max = self._tag_max.copy()
        new._open = {k: w.copy() for k, w in self._open.items()}
        new._closed = {k: w.copy() for k, w in self._closed.items()}
        new._rollups = {
            k: _Rollup(dict(r.parts), r.revision, r.tag_ids) for k, r in self._rollups.items()
        }
        new._source_max = dict(self._source_max)
        return new

    # -- state ---------------------------------------------------------------------------
    @property
    def closed_through_ms(self) -> int | None:
        """End of the newest closed base window."""
        return self._closed_through

    def watermark_ms(self, now_wall_ms: int) -> int | None:
        """Return the current watermark, or None before the first point."""
        if not self._source_max or self._max_event_ms is None:
            return None
        idle = max(0, now_wall_ms - self._wall_at_max_ms) if self.idle_close else 0
        return min(self._source_max.values()) + idle - self.allowed_lateness_ms

    def next_close_wall_ms(self) -> int | None:
        """Wall time at which the oldest open window closes if no newer event arrives."""
        if not self._open or not self.idle_close or not self._source_max:
            return None
        oldest = min(self._open)
        newest = min(self._source_max.values())
        lag = oldest + self.window_ms + self.allowed_lateness_ms - newest
        if oldest == self._held:
            # Due but held for its tails (see _held_from): at the latest until the watermark
            # passes its newest point by max_gap_ms.
            last = int(self._open[oldest].summary().last_ts.max())
            lag = last + self.max_gap_ms + self.allowed_lateness_ms - newest
        return self._wall_at_max_ms + max(lag, 0)

    def _gids(self, tags: tuple[TagRef, ...]) -> npt.NDArray[np.int32]:
        lut = self._reg.ids(tags, np.int32)
        if len(self._tag_max) < len(self._reg):
            grow = len(self._reg) - len(self._tag_max)
            self._tag_max = np.r_[self._tag_max, np.full(grow, np.iinfo(np.int64).min // 2)]
        return lut

    def _tag_late(self, gid: npt.NDArray[np.int32], ts: I64) -> npt.NDArray[np.bool_]:
        """Flag points whose tag already passed their window end plus the lateness."""
        o = tag_order(gid, ts, self._tag_max)
        end = (o.ts // self.window_ms + 1) * self.window_ms
        late = np.empty(len(ts), np.bool_)
        late[o.order] = end + self.allowed_lateness_ms <= o.before
        g_last = o.gid[o.last]
        self._tag_max[g_last] = np.maximum(self._tag_max[g_last], o.newest[o.last])
        return late

    # -- input ---------------------------------------------------------------------------
    def add(self, batch: PointBatch, now_wall_ms: int) -> tuple[list[WindowAggregates], PointBatch]:
        """Buffer a batch; return ``(closed or re-emitted windows, late points)``."""
        if not len(batch):
            return self.advance(now_wall_ms), batch
        self.points_in += len(batch)
        gid = self._luts.get(batch.tags)[batch.tag_idx]
        ts = batch.ts_ms
        late = self._tag_late(gid, ts)
        late_batch = batch.select(late) if late.any() else PointBatch.empty()
        self.points_late += len(late_batch)
        keep = ~late
        dirty: set[int] = set()
        if keep.any():
            gid_k, ts_k, val_k = gid[keep], ts[keep], batch.value[keep]
            slice_k = ts_k - ts_k % self.slice_ms  # slices tile the windows
            win_k = ts_k - ts_k % self.window_ms
            lo, hi = int(win_k.min()), int(win_k.max())
            if lo == hi:  # the common case: the batch falls in one window
                parts: list[tuple[int, Any]] = [(lo, slice(None))]
            else:
                # One stable sort, then contiguous runs: linear in the batch whatever the
                # number of windows it spans (a history file's batch spans thousands); each
                # window's points are then a view, in arrival order.
                if not bool((win_k[1:] >= win_k[:-1]).all()):
                    order = np.argsort(win_k, kind="stable")
                    gid_k, ts_k, val_k = gid_k[order], ts_k[order], val_k[order]
                    slice_k, win_k = slice_k[order], win_k[order]
                firsts, ends = _segments(win_k)
                wins = win_k[firsts]
                fresh, reopened = self._fresh_from(wins)
                if fresh < len(wins) or reopened:
                    a = int(firsts[fresh]) if fresh < len(wins) else len(win_k)
                    self._fast = self._fresh_run(
                        reopened, (win_k[a:], slice_k[a:], gid_k[a:], ts_k[a:], val_k[a:])
                    )
                    # Points entering the window after a closed one may move its tail.
                    f0 = int(self._fast.starts[0])
                    before = self._closed.get(f0 - self.window_ms)
                    if before is not None and fresh < len(wins) and int(wins[fresh]) == f0:
                        sel0 = slice(a, int(ends[fresh]))
                        if self._moves_next(before, gid_k[sel0], ts_k[sel0]):
                            dirty.add(f0 - self.window_ms)
                parts = [
                    (k, slice(a, b))
                    for k, a, b in zip(
                        wins[:fresh].tolist(),
                        firsts[:fresh].tolist(),
                        ends[:fresh].tolist(),
                        strict=True,
                    )
                ]
            for wstart, sel in parts:
                if self._closed_through is not None and wstart < self._closed_through:
                    win = self._closed.get(wstart) or self._closed.setdefault(
                        wstart, _Win(max_gap=self.max_gap_ms)
                    )
                    dirty.add(wstart)
                    # Its neighbours' heads and tails lean on its first and last points.
                    dirty.update(
                        s
                        for s in (wstart - self.window_ms, wstart + self.window_ms)
                        if s in self._closed
                    )
                else:
                    win = self._open.get(wstart) or self._open.setdefault(
                        wstart, _Win(max_gap=self.max_gap_ms)
                    )
                    before = self._closed.get(wstart - self.window_ms)
                    if before is not None and self._moves_next(before, gid_k[sel], ts_k[sel]):
                        dirty.add(wstart - self.window_ms)
                win.add(slice_k[sel], gid_k[sel], ts_k[sel], val_k[sel])
            newest = int(ts_k.max())
            src = batch.source or "_"
            if newest > self._source_max.get(src, np.iinfo(np.int64).min):
                self._source_max[src] = newest
            if self._max_event_ms is None or newest > self._max_event_ms:
                self._max_event_ms = newest
                self._wall_at_max_ms = now_wall_ms
        out = self._reemit(dirty, "reopened") if dirty else []
        out += self._advance(now_wall_ms)
        self._materialize()  # fresh windows the watermark has not passed
        if not self.blocks:
            out = [one for w in out for one in w.windows()]
        return out, late_batch

    def _fresh_from(self, wins: I64) -> tuple[int, list[int]]:
        """Return where a batch's windows (starts ``wins``, rising) begin to close in bulk.

        Returns the index of the first such window of the batch and the open windows to take
        back in with it. Bulk windows come after every window held, or are open windows that
        only ever buffered raw points (the last ones of the batch before, waiting for their
        tags to pass them): nothing but their own points decides their rows. Fewer than 3
        such windows are not worth it.
        """
        w = self.window_ms
        takeback = all(
            x.revision < 0 and x.prev is None and x.nxt is None and x.raw_only()
            for x in self._open.values()
        )
        held = [*self._closed] if takeback else [*self._open, *self._closed]
        floor = max(held) + w if held else None
        if self._closed_through is not None:
            ct = self._closed_through
            floor = ct if floor is None else max(floor, ct)
        reopened = sorted(k for k in self._open if floor is None or k >= floor) if takeback else []
        i = 0 if floor is None else int(np.searchsorted(wins, floor))
        if len({*reopened, *wins[i:].tolist()}) < 3:
            return len(wins), []
        return i, reopened

    def _fresh_run(
        self, reopened: list[int], batch: tuple[I64, I64, npt.NDArray[np.int32], I64, F64]
    ) -> _Fresh:
        """Return the bulk windows: the open ones taken back (points first), then the batch's."""
        chunks = [batch]
        for start in reversed(reopened):
            key, gid, ts, value = self._open.pop(start).raw_points()
            chunks.insert(0, (np.full(len(gid), start, np.int64), key, gid, ts, value))
        if len(chunks) == 1:
            return _Fresh(*batch)
        win, key, gid, ts, value = (np.concatenate(c) for c in zip(*chunks, strict=True))
        if not bool((win[1:] >= win[:-1]).all()):
            order = np.argsort(win, kind="stable")  # arrival order within each window
            win, key, gid, ts, value = win[order], key[order], gid[order], ts[order], value[order]
        return _Fresh(win, key, gid, ts, value)

    def _materialize(self) -> None:
        """Make the fresh windows left ordinary open windows."""
        fr, self._fast = self._fast, None
        if fr is None:
            return
        for i, start in enumerate(fr.starts.tolist()):
            a, b = int(fr.bounds[i]), int(fr.bounds[i + 1])
            win = self._open[start] = _Win(max_gap=self.max_gap_ms)
            win.add(fr.slc[a:b], fr.gid[a:b], fr.ts[a:b], fr.value[a:b])

    def advance(self, now_wall_ms: int) -> list[WindowAggregates]:
        """Close every window the watermark has passed; forget windows past the horizon."""
        return self._advance(now_wall_ms)

    def final_before_ms(self) -> int | None:
        """Windows (base or rollup) ending at or before this time are final.

        They end ``allowed_lateness_ms + max_gap_ms + max_source_lag_ms`` or more before the
        shard's newest point: only a source lagging by more than ``max_source_lag_ms`` could
        still change them (it would start them afresh).
        """
        if self._max_event_ms is None:
            return None
        return (
            self._max_event_ms - self.allowed_lateness_ms - self.max_gap_ms - self.max_source_lag_ms
        )

    def _final_stamp(self, closed_by: str) -> int:
        """``final_before_ms`` for rows emitted now: all final at end of input (eof)."""
        if closed_by == "eof":
            return FINAL_ALL_MS
        fb = self.final_before_ms()
        return -FINAL_ALL_MS if fb is None else fb

    def _advance(self, now_wall_ms: int) -> list[WindowAggregates]:
        wm = self.watermark_ms(now_wall_ms)
        if wm is None:
            return []
        through = (wm // self.window_ms) * self.window_ms
        # Summarise the slices the watermark has passed, all at once, so that closing a window
        # only has the last slice left to do (a point arriving later for a slice recomputes
        # it). A batch of history passes thousands of slices: one sort for all of them.
        _summarize_slices(
            [
                sl
                for start, win in self._open.items()
                if start + self.window_ms > through
                for slice_start, sl in win.slices.items()
                if sl.cached is None and slice_start + self.slice_ms <= wm
            ]
        )
        out = []
        if self._closed_through is None or through > self._closed_through:
            out = self._close_through(through, wm=wm)
        # A window closed by wall time (idle_close) may close before its tags pass its end +
        # lateness; release their raw points as soon as they do.
        for start, win in self._closed.items():
            passed = start + self.window_ms + self.allowed_lateness_ms
            if len(win.held) and (self._tag_max[win.held] >= passed).any():
                win.release(self._tag_max < passed)
        # A closed window (or emitted rollup) is forgotten once every tag with points in it has
        # passed its end + lateness (none of them can send it an on-time point any more) and
        # the shard's newest point is max_source_lag_ms past that (a source that lags or
        # starts late still finds the other tags' rows). A tag that had no point in a
        # forgotten window and later sends one starts it afresh (its rows are its own).
        for start in [
            s
            for s, w in self._closed.items()
            if self._all_passed(w.gids(), s + self.window_ms + self.max_gap_ms)
        ]:
            del self._closed[start]
        for key in [
            k
            for k, r in self._rollups.items()
            if r.revision >= 0 and self._all_passed(r.gids(), self._rollup_end(k) + self.max_gap_ms)
        ]:
            del self._rollups[key]
        return out

    def _all_passed(self, gids: npt.NDArray[np.int32], end_ms: int) -> bool:
        passed = end_ms + self.allowed_lateness_ms
        if self._max_event_ms is None or self._max_event_ms < passed + self.max_source_lag_ms:
            return False
        return bool((self._tag_max[gids] >= passed).all())

    def flush(self) -> list[WindowAggregates]:
        """Close all windows (end of input)."""
        if not self._open and not any(r.revision < 0 for r in self._rollups.values()):
            return []
        ends = [s + self.window_ms for s in self._open]
        ends += [self._rollup_end(k) for k, ru in self._rollups.items() if ru.revision < 0]
        # The rollups the open windows are about to join (not created until they close).
        ends += [
            self._rollup_end((r, self._rollup_start(r, s)))
            for s in self._open
            for r in self.rollup_ms
        ]
        return self._close_through(max(ends), closed_by="eof")

    def _emit(
        self, summary: Summary, window_ms: int, start: int, closed_by: str, revision: int
    ) -> WindowAggregates:
        return self._emit_many([summary], window_ms, [start], closed_by, [revision])[0]

    def _emit_many(
        self,
        summaries: list[Summary],
        window_ms: int,
        starts: list[int],
        closed_by: str,
        revisions: list[int],
    ) -> list[WindowAggregates]:
        """Return the aggregates of windows of one size (``end`` set where not start + size)."""
        if not summaries:
            return []
        ends: list[int | None] = [None] * len(starts)
        if window_ms != self.window_ms:
            for i, start in enumerate(starts):
                end = self._rollup_end((window_ms, start))
                ends[i] = None if end == start + window_ms else end
        return finalize_many(
            summaries,
            window_ms=window_ms,
            starts=starts,
            tags=self._reg.tags,
            closed_by=closed_by,
            revisions=revisions,
            ends=ends,
            zone=self.zone,
            final_before_ms=self._final_stamp(closed_by),
        )

    def _rollup_start(self, rollup_ms: int, base_start: int) -> int:
        """Start of the rollup window holding the base window at ``base_start``.

        Whole days follow the site's time zone: they start at local midnight (and last 23 or
        25 hours when the clocks change); other rollups are aligned to UTC.
        """
        if self._tz is None or rollup_ms % _DAY_MS:
            return base_start - base_start % rollup_ms
        days = rollup_ms // _DAY_MS
        ordinal = ms_to_datetime(base_start).astimezone(self._tz).date().toordinal()
        return self._midnight(ordinal - (ordinal - _EPOCH_ORDINAL) % days)

    def _rollup_end(self, key: tuple[int, int]) -> int:
        rollup_ms, start = key
        if self._tz is None or rollup_ms % _DAY_MS:
            return start + rollup_ms
        ordinal = ms_to_datetime(start).astimezone(self._tz).date().toordinal()
        return self._midnight(ordinal + rollup_ms // _DAY_MS)

    def _midnight(self, ordinal: int) -> int:
        """Local midnight starting the day ``ordinal``, in UTC epoch ms (cached)."""
        ms = self._midnights.get(ordinal)
        if ms is None:
            day = date.fromordinal(ordinal)
            local = datetime(day.year, day.month, day.day, tzinfo=self._tz)
            ms = self._midnights[ordinal] = to_ms(local)
        return ms

    def _reemit(self, starts: set[int], closed_by: str) -> list[WindowAggregates]:
        out = []
        touched: set[tuple[int, int]] = set()
        for start in sorted(starts):
            win = self._closed[start]
            summary = self._edged([start], [win.summary()], [win])[0]
            win.revision += 1
            self.reemitted += 1
            out.append(self._emit(summary, self.window_ms, start, closed_by, win.revision))
            for r in self.rollup_ms:
                key = (r, self._rollup_start(r, start))
                ru = self._rollups.setdefault(key, _Rollup())
                # A window started afresh holds only its new tags: keep the others' rows.
                ru.put(start, _override(ru.parts.get(start), summary))
                touched.add(key)
        for key in sorted(touched, key=lambda k: (self._rollup_end(k), k[0])):
            ru = self._rollups[key]
            if ru.revision >= 0:  # already emitted: emit the corrected rollup
                ru.revision += 1
                parts = [ru.parts[s] for s in sorted(ru.parts)]
                summary = combine(parts, self.max_gap_ms)
                out.append(self._emit(summary, key[0], key[1], closed_by, ru.revision))
        return out

    def _moves_next(self, before: _Win, gid: npt.NDArray[np.int32], ts: I64) -> bool:
        """Return True if points entering the window after ``before`` move one of its tails.

        A point moves a tail when it is near enough to the tag's last point in ``before``
        (``max_gap_ms``) and comes before the point that tail was computed from, if any.
        """
        if before.nxt is None:
            return False
        own = before.summary()
        has, last_ts, _ = _match(gid, (own.gid, own.last_ts, own.last))
        near = has & (ts - last_ts <= self.max_gap_ms)
        if not near.any():
            return False
        known, n_ts, _ = _match(gid, before.nxt)
        return bool((near & (~known | (ts < n_ts))).any())

    def _neighbour(self, start: int, *, after: bool) -> Edge | None:
        """First (``after``) or last points of the base window at ``start``, if it exists."""
        win = self._closed.get(start) or (self._open.get(start) if after else None)
        if win is None and after and self._fast is not None:
            return self._fast.firsts(start)
        if win is not None:
            if after:
                return win.firsts()
            s = win.summary()
            return s.gid, s.last_ts, s.last
        if not after and self._last_closed is not None and self._last_closed[0] == start:
            return self._last_closed[1]
        return None

    def _edged(self, starts: list[int], sums: list[Summary], wins: list[_Win]) -> list[Summary]:
        """Add heads and tails to the summaries of the base windows at ``starts``.

        They are the parts of the segments to the points just outside each window, split at
        its bounds by linear interpolation; consecutive windows are taken together, the others'
        neighbours come from the windows around them.
        """
        if not starts:
            return []
        w = self.window_ms
        prevs: list[Edge | None] = []
        nxts: list[Edge | None] = []
        for i, (start, win) in enumerate(zip(starts, wins, strict=True)):
            if i and starts[i - 1] == start - w:
                p = sums[i - 1]
                prev: Edge | None = (p.gid, p.last_ts, p.last)
            else:
                prev = _overlay(win.prev, self._neighbour(start - w, after=False))
            nxt = _overlay(win.nxt, self._next_edge(starts, sums, i))
            win.prev = prev
            # No window after it yet: any point there later gives a tail, so it must show.
            win.nxt = nxt if nxt is not None else (_EMPTY_GID, _EMPTY_TS, _EMPTY_VAL)
            prevs.append(prev)
            nxts.append(nxt)
        return _with_edges(sums, starts, w, prevs, nxts, self.max_gap_ms)

    def _next_edge(self, starts: list[int], sums: list[Summary], i: int) -> Edge | None:
        """First points after the window ``starts[i]``: the next in the list, or around it."""
        start = starts[i]
        if i + 1 < len(starts) and starts[i + 1] == start + self.window_ms:
            n = sums[i + 1]
            return n.gid, n.first_ts, n.first
        return self._neighbour(start + self.window_ms, after=True)

    def _held_from(self, starts: list[int], interior: list[Summary], wm: int) -> int:
        """Index of the first window to hold back: one with a tag whose tail may still move.

        A window is emitted once, for each of its tags, the first point after it is known and
        final (the tag has passed it by the allowed lateness: no on-time point can come before
        it any more), or the watermark has passed the tag's last point by ``max_gap_ms`` (no
        point after it is expected to be near enough). So tails are final when emitted, and
        re-emissions stay as rare as reopened windows.
        """
        if not starts:
            return 0
        nxts = [self._next_edge(starts, interior, i) for i in range(len(starts))]
        sizes = [len(x) for x in interior]
        owner = np.repeat(np.arange(len(starts), dtype=np.int64), sizes)
        gid = np.concatenate([x.gid for x in interior])
        last_ts = np.concatenate([x.last_ts for x in interior])
        has, n_ts, _ = _match_many(gid, owner, nxts)
        final = has & (self._tag_max[gid] >= n_ts + self.allowed_lateness_ms)
        quiet = wm >= last_ts + self.max_gap_ms
        bad = owner[~(final | quiet)]
        return int(bad.min()) if len(bad) else len(starts)

    def _close_through(
        self, through: int, closed_by: str = "watermark", wm: int | None = None
    ) -> list[WindowAggregates]:
        """Close the windows ending at or before ``through``; see :meth:`_close_fresh`."""
        fr = self._fast
        if fr is None:
            return self._close_held(through, closed_by, wm)
        f0 = int(fr.starts[0])
        if wm is None or closed_by != "watermark" or through < f0 + self.window_ms:
            self._materialize()
            return self._close_held(through, closed_by, wm)
        # In time order: the windows before the fresh ones, then the fresh ones that can close
        # in bulk, then the rest as ordinary windows. Each step decides as one pass would.
        out = self._close_held(f0, closed_by, wm)
        if self._held is None:
            out += self._close_fresh(through, wm)
        self._materialize()
        if (
            self._held is None
            and self._open
            and (self._closed_through is None or through > self._closed_through)
        ):
            out += self._close_held(through, closed_by, wm)
        return out

    def _close_held(
        self, through: int, closed_by: str = "watermark", wm: int | None = None
    ) -> list[WindowAggregates]:
        """Close the windows held in ``_open`` that end at or before ``through``."""
        out: list[WindowAggregates] = []
        starts = sorted(s for s in self._open if s + self.window_ms <= through)
        wins = [self._open.pop(s) for s in starts]
        # Windows every tag of which has already passed (a history replay closes thousands
        # per batch) are summarised straight from their raw points and never kept: nothing
        # can reopen them. The others keep slice summaries for later points.
        gap = self.max_gap_ms
        raws = {i: w.raw_points() for i, w in enumerate(wins) if w.raw_only()}
        done = [
            i
            for i, raw in raws.items()
            if self._all_passed(raw[1], starts[i] + self.window_ms + gap)
        ]
        interior: dict[int, Summary] = dict(
            zip(done, _window_summaries([raws[i] for i in done], gap), strict=True)
        )
        kept = [i for i in range(len(wins)) if i not in interior]
        _summarize_slices([sl for i in kept for sl in wins[i].slices.values() if sl.cached is None])
        interior.update(zip(kept, combine_many([wins[i].parts() for i in kept], gap), strict=True))
        if wm is not None:  # closed by the watermark: hold back windows whose tails may move
            cut = self._held_from(starts, [interior[i] for i in range(len(wins))], wm)
            for start, win in zip(starts[cut:], wins[cut:], strict=True):
                self._open[start] = win
            self._held = starts[cut] if cut < len(starts) else None
            if cut < len(starts):
                through = starts[cut]
            starts, wins = starts[:cut], wins[:cut]
            kept = [i for i in kept if i < cut]
        edged = self._edged(starts, [interior[i] for i in range(len(wins))], wins)
        if starts and (self._last_closed is None or starts[-1] >= self._last_closed[0]):
            last = interior[len(wins) - 1]
            self._last_closed = (starts[-1], (last.gid, last.last_ts, last.last))
        out += self._emit_many(edged, self.window_ms, starts, closed_by, [0] * len(starts))
        for i, (start, win) in enumerate(zip(starts, wins, strict=True)):
            summary = edged[i]
            for r in self.rollup_ms:
                key = (r, self._rollup_start(r, start))
                self._rollups.setdefault(key, _Rollup()).put(start, summary)
            if i in kept:
                win.revision = 0
                # Only tags that have not passed the window end + lateness can still reopen
                # it: keep their raw points, the others live on in the slice summaries.
                win.release(self._tag_max < start + self.window_ms + self.allowed_lateness_ms)
                self._closed[start] = win
        self._closed_through = (
            through if self._closed_through is None else max(through, self._closed_through)
        )
        return out + self._emit_ready(closed_by)

    def _emit_ready(self, closed_by: str) -> list[WindowAggregates]:
        """Emit the rollups not yet emitted whose end the closed base windows have reached."""
        assert self._closed_through is not None  # called after a close
        gap = self.max_gap_ms
        ready = sorted(
            (
                k
                for k, ru in self._rollups.items()
                if ru.revision < 0 and self._rollup_end(k) <= self._closed_through
            ),
            key=lambda k: (self._rollup_end(k), k[0]),
        )
        groups = [
            [self._rollups[k].parts[s] for s in sorted(self._rollups[k].parts)] for k in ready
        ]
        rolled = combine_many(groups, gap)
        by_size: dict[int, list[int]] = {}
        for i, (r, start) in enumerate(ready):
            self._rollups[(r, start)].revision = 0
            by_size.setdefault(r, []).append(i)
        emitted: dict[int, WindowAggregates] = {}
        for r, idx in by_size.items():
            aggs = self._emit_many(
                [rolled[i] for i in idx], r, [ready[i][1] for i in idx], closed_by, [0] * len(idx)
            )
            emitted.update(zip(idx, aggs, strict=True))
        return [emitted[i] for i in range(len(ready))]

    def _close_fresh(self, through: int, wm: int) -> list[WindowAggregates]:
        """Close the leading fresh windows that one pass of :meth:`_close_held` would close.

        Those that end by ``through`` and whose tails are final (none is held back): the same
        rows, bit for bit, from arrays over all windows instead of objects per window. Windows
        a tag can still reopen are kept, as that pass keeps them; the others are forgotten.
        Stops at the first window held back; the rest stay in ``_fast``.
        """
        fr = self._fast
        assert fr is not None  # called with fresh windows only
        w, gap, lateness = self.window_ms, self.max_gap_ms, self.allowed_lateness_ms
        starts, n = fr.starts, len(fr.starts)
        counts = np.diff(fr.bounds)
        rows, owner = _window_rows(
            fr.slc, np.repeat(np.arange(n, dtype=np.int64), counts), fr.gid, fr.ts, fr.value, gap
        )
        tag_max = self._tag_max[rows.gid]
        row_start = starts[owner]
        # Done: every tag with points here passed end + max_gap + lateness, the shard's newest
        # point passed that by max_source_lag (see _all_passed).
        bad = np.zeros(n, np.bool_)
        bad[owner[tag_max < row_start + (w + gap + lateness)]] = True
        assert self._max_event_ms is not None  # points were added
        done = ~bad & (starts + (w + gap + lateness + self.max_source_lag_ms) <= self._max_event_ms)
        # Held: a tag whose point after the window (in the next one) is not final, and the
        # watermark has not passed its last point by max_gap (see _held_from).
        g = rows.gid.astype(np.int64)
        span = int(g.max()) + 1
        key = owner * span + g
        follows = np.append(starts[1:] == starts[:-1] + w, False)  # window i + 1 is adjacent
        size = np.diff(np.searchsorted(owner, np.arange(n + 1)))  # rows per window
        pos = _find(key, key + span, np.arange(len(key)) + size[owner])
        has_n = (key[pos] == key + span) & follows[owner]
        n_ts, n_val = rows.first_ts[pos], rows.first[pos]
        final = has_n & (tag_max >= n_ts + lateness)
        bad[:] = False
        bad[owner[~(final | (wm >= rows.last_ts + gap))]] = True
        closable = (starts + w <= through) & ~bad
        k = n if closable.all() else int(np.argmin(closable))
        if not k:
            return []
        r = int(np.searchsorted(owner, k))
        self._fast = fr.after(k)
        # Heads: the point before, in the window before (the first window's from the state).
        guess = np.arange(r) - np.concatenate(([0], size[:-1]))[owner[:r]]
        pos = _find(key[:r], key[:r] - span, guess)
        precedes = np.concatenate(([False], starts[1:] == starts[:-1] + w))
        has_p = (key[pos] == key[:r] - span) & precedes[owner[:r]]
        p_ts, p_val = rows.last_ts[pos], rows.last[pos]
        first_rows = int(np.searchsorted(owner, 1))
        edge = self._neighbour(int(starts[0]) - w, after=False)
        if edge is not None and first_rows:
            has_e, e_ts, e_val = _match(rows.gid[:first_rows], edge)
            has_p[:first_rows] = has_e
            p_ts[:first_rows] = np.where(has_e, e_ts, p_ts[:first_rows])
            p_val[:first_rows] = np.where(has_e, e_val, p_val[:first_rows])
        cut = rows.take(slice(0, r))
        head, head_ms, tail, tail_ms = _heads_and_tails(
            (cut.first_ts, cut.first, cut.last_ts, cut.last),
            row_start[:r],
            w,
            (has_p, p_ts, p_val),
            (has_n[:r], n_ts[:r], n_val[:r]),
            gap,
        )
        edged = Summary(
            **{f: getattr(cut, f) for f in Summary.__slots__[:12]},
            head=head,
            head_ms=head_ms,
            tail=tail,
            tail_ms=tail_ms,
        )
        bounds = np.searchsorted(owner, np.arange(k + 1))
        for i in np.flatnonzero(~done[:k]).tolist():  # kept: a tag may still reopen them
            start = int(starts[i])
            live = self._tag_max < start + w + lateness
            a, b = int(fr.bounds[i]), int(fr.bounds[i + 1])
            lo, hi = int(bounds[i]), int(bounds[i + 1])
            if live[fr.gid[a:b]].any():
                win = _Win(max_gap=gap)
                win.add(fr.slc[a:b], fr.gid[a:b], fr.ts[a:b], fr.value[a:b])
            else:  # what release() leaves when no raw point stays: the rows as one summary
                whole = rows.take(slice(lo, hi))
                one = _Slice(base=whole, cached=whole, max_gap=gap)
                win = _Win({int(fr.slc[a:b].min()): one}, max_gap=gap, held=np.flatnonzero(live))
            if precedes[i]:
                p_lo = int(np.searchsorted(owner, i - 1))
                win.prev = (rows.gid[p_lo:lo], rows.last_ts[p_lo:lo], rows.last[p_lo:lo])
            elif i == 0:
                win.prev = edge
            win.nxt = (_EMPTY_GID, _EMPTY_TS, _EMPTY_VAL)
            if follows[i]:
                n_hi = int(np.searchsorted(owner, i + 2))
                win.nxt = (rows.gid[hi:n_hi], rows.first_ts[hi:n_hi], rows.first[hi:n_hi])
            win.revision = 0
            if win.pending:
                win.release(live)
            self._closed[start] = win
        last = int(bounds[k - 1])
        self._last_closed = (
            int(starts[k - 1]),
            (edged.gid[last:], edged.last_ts[last:], edged.last[last:]),
        )
        self._closed_through = through if k == n else min(through, int(starts[k]))
        out = [self._block(edged, row_start[:r], w)]
        return out + self._fresh_rollups(edged, owner[:r], starts[:k])

    def _block(self, rows: Summary, row_start: I64, window_ms: int) -> WindowAggregates:
        """Return one block of windows of one size closed now (rows by window, then tag)."""
        mean, std, twa, integral = _final_columns(rows)
        tags = self._reg.tags
        return WindowAggregates(
            window_ms=window_ms,
            start_ms=int(row_start[0]),
            tags=_tags_of(tags, rows.gid),
            count=rows.count,
            min=rows.min,
            max=rows.max,
            mean=mean,
            std=std,
            sum=rows.sum,
            first=rows.first,
            last=rows.last,
            first_ts=rows.first_ts,
            last_ts=rows.last_ts,
            twa=twa,
            integral=integral,
            zone=self.zone,
            final_before_ms=self._final_stamp("watermark"),
            starts=row_start,
        )

    def _fresh_rollups(self, rows: Summary, owner: I64, starts: I64) -> list[WindowAggregates]:
        """Put bulk-closed base windows into their rollups; emit those now complete.

        A rollup made of these windows alone and complete is combined and emitted from the
        arrays, and kept (as parts per window) only if a tag could still reopen it. The others
        get one part per window, as :meth:`_close_held` gives them.
        """
        bounds = np.searchsorted(owner, np.arange(len(starts) + 1))

        def put(key: tuple[int, int], windows: list[int], ru: _Rollup | None = None) -> None:
            ru = ru or self._rollups.setdefault(key, _Rollup())
            for i in windows:
                a, b = int(bounds[i]), int(bounds[i + 1])
                ru.put(int(starts[i]), rows.take(slice(a, b)))

        assert self._closed_through is not None
        assert self._max_event_ms is not None
        ct = self._closed_through
        out: list[WindowAggregates] = []
        for r in self.rollup_ms:
            rs = self._rollup_starts(r, starts)  # per window
            first = np.flatnonzero(np.concatenate((LEADING_TRUE, rs[1:] != rs[:-1])))
            keys = rs[first]  # the rollups, in time order
            of_win = np.cumsum(np.concatenate((LEADING_TRUE, rs[1:] != rs[:-1]))) - 1
            if self._tz is None or r % _DAY_MS:
                ends = keys + r
            else:
                ends = np.asarray([self._rollup_end((r, k)) for k in keys.tolist()], np.int64)
            held = {k for rr, k in self._rollups if rr == r}
            bulk = (ends <= ct) & ~np.isin(keys, np.fromiter(held, np.int64, len(held)))
            for j in np.flatnonzero(~bulk).tolist():  # a handful: at the ends of the run
                put((r, int(keys[j])), np.flatnonzero(of_win == j).tolist())
            if not bulk.any():
                continue
            row_rollup = of_win[owner]
            nums = np.cumsum(bulk) - 1  # rollup -> its number among the bulk ones
            if bulk.all():
                full, r_owner = _combine_full(rows, owner, row_rollup, self.max_gap_ms)
            else:
                idx = np.flatnonzero(bulk[row_rollup])
                sel: Any = idx
                if idx[-1] - idx[0] + 1 == len(idx):  # one run of rows: views, not copies
                    sel = slice(int(idx[0]), int(idx[-1]) + 1)
                cat = rows.take(sel)
                full, r_owner = _combine_full(
                    cat, owner[sel], nums[row_rollup[sel]], self.max_gap_ms
                )
            b_keys, b_ends = keys[bulk], ends[bulk]
            # Kept while a tag could still send it a point (see _advance's forgetting).
            row_end = b_ends[r_owner]
            lag = self.max_gap_ms + self.allowed_lateness_ms
            open_rows = self._tag_max[full.gid] < row_end + lag
            keep = b_ends + lag + self.max_source_lag_ms > self._max_event_ms
            keep[r_owner[open_rows]] = True
            for j in np.flatnonzero(keep).tolist():
                put(
                    (r, int(b_keys[j])),
                    np.flatnonzero(of_win == np.flatnonzero(bulk)[j]).tolist(),
                    self._rollups.setdefault((r, int(b_keys[j])), _Rollup(revision=0)),
                )
            if bool((b_ends == b_keys + r).all()):
                out.append(self._block(full, b_keys[r_owner], r))
            else:  # local days of 23 or 25 hours: one window each, with its end
                out += self._emit_many(
                    _split(full, r_owner, len(b_keys)),
                    r,
                    b_keys.tolist(),
                    "watermark",
                    [0] * len(b_keys),
                )
        return self._emit_ready("watermark") + out

    def _rollup_starts(self, rollup_ms: int, starts: I64) -> I64:
        """:meth:`_rollup_start` of each base window start in ``starts`` (rising)."""
        if self._tz is None or rollup_ms % _DAY_MS:
            return starts - starts % rollup_ms
        lo = ms_to_datetime(int(starts[0])).astimezone(self._tz).date().toordinal() - 1
        hi = ms_to_datetime(int(starts[-1])).astimezone(self._tz).date().toordinal() + 1
        days = rollup_ms // _DAY_MS
        first = [o - (o - _EPOCH_ORDINAL) % days for o in range(lo, hi + 1)]
        midnights = np.asarray([self._midnight(o) for o in range(lo, hi + 1)], np.int64)
        of_day = np.asarray([self._midnight(o) for o in first], np.int64)
        return of_day[np.searchsorted(midnights, starts, side="right") - 1]

    def open_windows(self) -> list[int]:
        """Return the start times of open base windows (for status output)."""
        return sorted(self._open)
