"""Columnar event-time tumbling-window aggregation (1 minute base windows, 15 minute rollups).

Points are buffered as arrays per base window and summarised once, when the window closes:
sort by (tag, time), then segment reductions. Rollup windows (e.g. 15 min) are combined from
the base-window summaries exactly (Chan's formula for the variance, boundary trapezoids for
the integral), so the 15 min figures equal a direct computation over all points.

Definitions, per tag and window ``[start, start + window_ms)``, over the points sorted by time
(ties keep arrival order):

- ``count, min, max, sum, mean``; ``std`` is the population standard deviation;
- ``first``/``last`` are the values of the earliest/latest point;
- ``integral`` is the trapezoidal integral of value over time between the first and the last
  point (value x milliseconds); ``twa`` (time-weighted mean) is ``integral / (last_ts -
  first_ts)``, or ``mean`` when the window holds one instant;
- ``energy`` is reported for power units only: ``integral`` in unit-hours (kW -> kWh).

Windows closed by the watermark carry ``closed_by="watermark"``; windows closed because the
input ended (bounded replay, Ctrl-C) carry ``closed_by="eof"``: they hold every point that
arrived, but a restarted live flow may re-emit them with more points under the same key.

Lateness: the watermark is ``max event time seen - allowed_lateness`` and, when
``idle_close`` is on, also advances with wall time since that event, so windows of idle tags
close. A point whose window already closed is *late*: it is returned to the caller (who puts
it on the late stream) and counted, never dropped silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from operators._state import PickleCopy, TableCache, TagRegistry, tag_order
from operators.errors import RuleError
from wire.records import PointBatch, TagRef, WindowAggregates

__all__ = ["Summary", "TumblingAggregator", "combine", "finalize", "summarize"]

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


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
    integral: F64

    def __len__(self) -> int:
        return len(self.gid)


def _segments(keys: npt.NDArray[Any]) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """Return start and end indices of runs of equal values in sorted ``keys``."""
    n = len(keys)
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]]) if n else np.empty(0, np.intp)
    ends = np.r_[starts[1:], n].astype(np.intp)
    return starts, ends


def summarize(gid: npt.NDArray[np.int32], ts: I64, value: F64) -> Summary:
    """Summarise raw points of one window per tag; input order only matters for ties."""
    order = np.lexsort((ts, gid))
    g, t, x = gid[order], ts[order], value[order]
    starts, ends = _segments(g)
    if not len(starts):
        e_i, e_f = np.empty(0, np.int64), np.empty(0, np.float64)
        return Summary(np.empty(0, np.int32), e_i, e_f, e_f, e_f, e_f, e_i, e_f, e_i, e_f, e_f)
    count = (ends - starts).astype(np.int64)
    total = np.add.reduceat(x, starts)
    mean = total / count
    dev = x - np.repeat(mean, count)
    m2 = np.add.reduceat(dev * dev, starts)
    seg = (x[1:] + x[:-1]) * 0.5 * np.diff(t).astype(np.float64)
    seg = np.where(g[1:] == g[:-1], seg, 0.0)
    integral = np.add.reduceat(np.r_[seg, 0.0], starts)
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
    )


def combine(parts: list[Summary]) -> Summary:
    """Combine summaries of consecutive windows into the summary of their union.

    ``parts`` must be in time order; the result equals :func:`summarize` over all points.
    """
    if len(parts) == 1:
        return parts[0]
    seq = np.concatenate([np.full(len(p), i, np.int64) for i, p in enumerate(parts)])
    cat = {f: np.concatenate([getattr(p, f) for p in parts]) for f in Summary.__slots__}
    order = np.lexsort((seq, cat["gid"]))
    c = {f: v[order] for f, v in cat.items()}
    g = c["gid"]
    starts, ends = _segments(g)
    count = np.add.reduceat(c["count"], starts)
    total = np.add.reduceat(c["sum"], starts)
    mean = total / count
    part_mean = c["sum"] / c["count"]
    spread = c["count"] * (part_mean - np.repeat(mean, ends - starts)) ** 2
    m2 = np.add.reduceat(c["m2"] + spread, starts)
    gap = (c["last"][:-1] + c["first"][1:]) * 0.5 * (c["first_ts"][1:] - c["last_ts"][:-1])
    gap = np.where(g[1:] == g[:-1], gap, 0.0)
    integral = np.add.reduceat(c["integral"] + np.r_[gap, 0.0], starts)
    return Summary(
        gid=g[starts],
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
    )


def finalize(
    summary: Summary,
    *,
    window_ms: int,
    start_ms: int,
    tags: list[TagRef],
    closed_by: str = "watermark",
    revision: int = 0,
) -> WindowAggregates:
    """Turn a summary into the aggregates of its window (mean, std, time-weighted mean)."""
    s = summary
    mean = s.sum / s.count
    span = (s.last_ts - s.first_ts).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        twa = np.where(span > 0, s.integral / np.where(span > 0, span, 1.0), mean)
    return WindowAggregates(
        window_ms=window_ms,
        start_ms=start_ms,
        tags=tuple(tags[i] for i in s.gid.tolist()),
        count=s.count,
        min=s.min,
        max=s.max,
        mean=mean,
        std=np.sqrt(np.maximum(s.m2 / s.count, 0.0)),
        sum=s.sum,
        first=s.first,
        last=s.last,
        first_ts=s.first_ts,
        last_ts=s.last_ts,
        twa=twa,
        integral=s.integral,
        closed_by=closed_by,
        revision=revision,
    )


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

    def add(self, gid: npt.NDArray[np.int32], ts: I64, value: F64) -> None:
        self.gid.append(gid)
        self.ts.append(ts)
        self.value.append(value)
        self.cached = None

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
            self.cached = _override(self.base, summarize(gid, ts, value))
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
        return _Slice(list(self.gid), list(self.ts), list(self.value), self.base, self.cached)


@dataclass(slots=True)
class _Win:
    """One base window: its slices (by slice start) and the revision last emitted.

    Once closed, ``held`` lists the tag ids that could still reopen it when raw points were
    last released; when one of them moves on, the release is repeated.
    """

    slices: dict[int, _Slice] = field(default_factory=dict)
    revision: int = -1  # -1: never emitted
    held: npt.NDArray[np.intp] = field(default_factory=lambda: np.empty(0, np.intp))
    tag_ids: npt.NDArray[np.int32] | None = None  # cache of gids(); None after a change

    def summary(self) -> Summary:
        return combine([self.slices[k].summary() for k in sorted(self.slices)])

    def release(self, live: npt.NDArray[np.bool_]) -> None:
        """Keep raw points only of tags flagged in ``live`` (indexed by tag id)."""
        for sl in self.slices.values():
            sl.release(live)
        self.held = np.flatnonzero(live)

    def copy(self) -> _Win:
        slices = {k: v.copy() for k, v in self.slices.items()}
        return _Win(slices, self.revision, self.held, self.tag_ids)

    def add(self, key: int, gid: npt.NDArray[np.int32], ts: I64, value: F64) -> None:
        """Add points to the slice starting at ``key``."""
        self.slices.setdefault(key, _Slice()).add(gid, ts, value)
        self.tag_ids = None

    def gids(self) -> npt.NDArray[np.int32]:
        """Tag ids with points in this window."""
        if self.tag_ids is None:
            self.tag_ids = np.unique(
                np.concatenate([sl.summary().gid for sl in self.slices.values()])
            )
        return self.tag_ids


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
    slowest tag, not a fixed horizon); a tag that had no point in a forgotten window and then
    sends one starts it afresh with its own rows. Final rows therefore depend only on each
    tag's own order, never on batching or on how sources interleave: a replay ends with the
    same rows as the live run. ``reopen_horizon_ms`` is accepted and ignored (it used to
    bound reopening by the watermark, which made results depend on the interleaving).
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
    ) -> None:
        if window_ms <= 0:
            msg = f"window_ms must be positive, got {window_ms}"
            raise RuleError(msg)
        for r in rollup_ms:
            if r <= window_ms or r % window_ms:
                msg = f"rollup window {r} ms must be a multiple of the base window {window_ms} ms"
                raise RuleError(msg)
        if allowed_lateness_ms < 0:
            msg = f"allowed_lateness_ms must be >= 0, got {allowed_lateness_ms}"
            raise RuleError(msg)
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
        self._source_max: dict[str, int] = {}
        self._max_event_ms: int | None = None
        self._wall_at_max_ms = 0
        self.points_in = 0
        self.points_late = 0
        self.reemitted = 0

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
        end = min(self._open) + self.window_ms
        lag = end + self.allowed_lateness_ms - min(self._source_max.values())
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
            lo, hi = int(slice_k.min()), int(slice_k.max())
            if lo == hi:  # the common case: the batch falls in one slice
                keys, inverse = [lo], None
            else:
                uniq, inverse = np.unique(slice_k, return_inverse=True)
                keys = uniq.tolist()
            for k, key in enumerate(keys):
                sel = slice(None) if inverse is None else inverse == k
                wstart = key - key % self.window_ms
                if self._closed_through is not None and wstart < self._closed_through:
                    win = self._closed.setdefault(wstart, _Win())
                    dirty.add(wstart)
                else:
                    win = self._open.setdefault(wstart, _Win())
                win.add(key, gid_k[sel], ts_k[sel], val_k[sel])
            newest = int(ts_k.max())
            src = batch.source or "_"
            if newest > self._source_max.get(src, np.iinfo(np.int64).min):
                self._source_max[src] = newest
            if self._max_event_ms is None or newest > self._max_event_ms:
                self._max_event_ms = newest
                self._wall_at_max_ms = now_wall_ms
        out = self._reemit(dirty, "reopened") if dirty else []
        return out + self.advance(now_wall_ms), late_batch

    def advance(self, now_wall_ms: int) -> list[WindowAggregates]:
        """Close every window the watermark has passed; forget windows past the horizon."""
        wm = self.watermark_ms(now_wall_ms)
        if wm is None:
            return []
        through = (wm // self.window_ms) * self.window_ms
        out = []
        if self._closed_through is None or through > self._closed_through:
            out = self._close_through(through)
        # Summarise the slices the watermark has passed now, so that closing a window only
        # has the last slice left to do (a point arriving later for a slice recomputes it).
        for win in self._open.values():
            for slice_start, sl in win.slices.items():
                if sl.cached is None and slice_start + self.slice_ms <= wm:
                    sl.summary()
        # A window closed by wall time (idle_close) may close before its tags pass its end +
        # lateness; release their raw points as soon as they do.
        for start, win in self._closed.items():
            passed = start + self.window_ms + self.allowed_lateness_ms
            if len(win.held) and (self._tag_max[win.held] >= passed).any():
                win.release(self._tag_max < passed)
        # A closed window (or emitted rollup) is forgotten once every tag with points in it has
        # passed its end + lateness: none of them can send it an on-time point any more. This
        # depends only on each tag's own order, never on how sources interleave. A tag that
        # had no point in a forgotten window and later sends one starts it afresh (its rows
        # are its own).
        for start in [
            s for s, w in self._closed.items() if self._all_passed(w.gids(), s + self.window_ms)
        ]:
            del self._closed[start]
        for key in [
            k
            for k, r in self._rollups.items()
            if r.revision >= 0 and self._all_passed(r.gids(), k[1] + k[0])
        ]:
            del self._rollups[key]
        return out

    def _all_passed(self, gids: npt.NDArray[np.int32], end_ms: int) -> bool:
        return bool((self._tag_max[gids] >= end_ms + self.allowed_lateness_ms).all())

    def flush(self) -> list[WindowAggregates]:
        """Close all windows (end of input)."""
        if not self._open and not any(r.revision < 0 for r in self._rollups.values()):
            return []
        ends = [s + self.window_ms for s in self._open]
        ends += [s + r for (r, s), ru in self._rollups.items() if ru.revision < 0]
        return self._close_through(max(ends), closed_by="eof")

    def _emit(
        self, summary: Summary, window_ms: int, start: int, closed_by: str, revision: int
    ) -> WindowAggregates:
        return finalize(
            summary,
            window_ms=window_ms,
            start_ms=start,
            tags=self._reg.tags,
            closed_by=closed_by,
            revision=revision,
        )

    def _reemit(self, starts: set[int], closed_by: str) -> list[WindowAggregates]:
        out = []
        touched: set[tuple[int, int]] = set()
        for start in sorted(starts):
            win = self._closed[start]
            summary = win.summary()
            win.revision += 1
            self.reemitted += 1
            out.append(self._emit(summary, self.window_ms, start, closed_by, win.revision))
            for r in self.rollup_ms:
                key = (r, start - start % r)
                ru = self._rollups.setdefault(key, _Rollup())
                # A window started afresh holds only its new tags: keep the others' rows.
                ru.put(start, _override(ru.parts.get(start), summary))
                touched.add(key)
        for key in sorted(touched, key=lambda k: (k[1] + k[0], k[0])):
            ru = self._rollups[key]
            if ru.revision >= 0:  # already emitted: emit the corrected rollup
                ru.revision += 1
                parts = [ru.parts[s] for s in sorted(ru.parts)]
                out.append(self._emit(combine(parts), key[0], key[1], closed_by, ru.revision))
        return out

    def _close_through(self, through: int, closed_by: str = "watermark") -> list[WindowAggregates]:
        out: list[WindowAggregates] = []
        for start in sorted(s for s in self._open if s + self.window_ms <= through):
            win = self._open.pop(start)
            summary = win.summary()
            win.revision = 0
            # Only tags that have not passed the window end + lateness can still reopen it:
            # keep their raw points, the others live on in the slice summaries.
            win.release(self._tag_max < start + self.window_ms + self.allowed_lateness_ms)
            self._closed[start] = win
            out.append(self._emit(summary, self.window_ms, start, closed_by, 0))
            for r in self.rollup_ms:
                self._rollups.setdefault((r, start - start % r), _Rollup()).put(start, summary)
        self._closed_through = (
            through if self._closed_through is None else max(through, self._closed_through)
        )
        for (r, start), ru in sorted(
            self._rollups.items(), key=lambda kv: (kv[0][1] + kv[0][0], kv[0][0])
        ):
            if ru.revision < 0 and start + r <= self._closed_through:
                ru.revision = 0
                parts = [ru.parts[s] for s in sorted(ru.parts)]
                out.append(self._emit(combine(parts), r, start, closed_by, 0))
        return out

    def open_windows(self) -> list[int]:
        """Return the start times of open base windows (for status output)."""
        return sorted(self._open)
