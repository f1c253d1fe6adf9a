"""Operator-internal state helpers: tag ids, per-table caches, cheap snapshot copies.

These are how operators keep per-tag state in arrays; no other package uses them.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from wire.records import Event, Kpi, TagRef, WindowAggregates, tag_matches

__all__ = [
    "LEADING_TRUE",
    "PickleCopy",
    "WindowEngine",
    "WindowSequencer",
    "TableCache",
    "TagOrder",
    "TagRegistry",
    "reorder",
    "run_max",
    "stable_order",
    "tag_matches",
    "tag_order",
]

T = TypeVar("T")
Outputs = tuple[list[Kpi], list[Event]]


class WindowEngine(Protocol):
    """What :class:`WindowSequencer` drives: a per-shard processor of closed windows."""

    def window(self, w: WindowAggregates) -> Outputs:
        """Return the facts of one window alone (its KPI rows), for every emission and revision."""
        ...

    def settle(self, w: WindowAggregates) -> Outputs:
        """Return what depends on the windows before it (events, running totals): once, in order."""
        ...


class WindowSequencer:
    """Feeds an engine's order-dependent part final windows only, in window order.

    The aggregator re-emits a window when a point on time for its tag arrives (a lagging
    source), so the order and the revisions in which windows come depend on how sources
    interleave. Per-window results are given at once for every revision (sinks upsert them).
    Events and running totals are computed when a window is final (it ends at or before the
    aggregator's ``final_before_ms``), from its last revision, in window order: identical for
    any interleaving. A window without ``final_before_ms`` (built by hand) is final at once;
    a revision of a window already settled (its source lagged past the aggregator's
    ``max_source_lag_ms``) updates its rows but not what was settled.
    """

    def __init__(self, engine: WindowEngine) -> None:
        self.engine = engine
        self._pending: dict[tuple[int, int], WindowAggregates] = {}
        self._settled: dict[int, int] = {}  # window_ms -> end of the last settled window
        self._final_before: int | None = None

    def process(self, w: WindowAggregates) -> Outputs:
        """Return the window's own results and those of every window now final.

        A block of windows (``w.starts``) is taken one window at a time.
        """
        if w.starts is not None:
            kpis, events = [], []
            for one in w.windows():
                k, e = self.process(one)
                kpis += k
                events += e
            return kpis, events
        kpis, events = self.engine.window(w)
        end = w.start_ms + w.window_ms if w.end is None else w.end
        if end > self._settled.get(w.window_ms, -(1 << 62)):
            self._pending[(end, w.window_ms)] = w
        fb = end if w.final_before_ms is None else w.final_before_ms
        if self._final_before is None or fb > self._final_before:
            self._final_before = fb
        for key in sorted(k for k in self._pending if k[0] <= self._final_before):
            done = self._pending.pop(key)
            self._settled[key[1]] = key[0]
            k2, e2 = self.engine.settle(done)
            kpis = kpis + k2
            events = events + e2
        return kpis, events


class TagRegistry:
    """Dense integer ids for tag references, in order of first sight (per operator state)."""

    def __init__(self) -> None:
        self.tags: list[TagRef] = []
        self._ids: dict[TagRef, int] = {}

    def __len__(self) -> int:
        return len(self.tags)

    def __getitem__(self, gid: int) -> TagRef:
        return self.tags[gid]

    def id(self, ref: TagRef) -> int:
        """Return the id of ``ref``, assigning the next one on first sight."""
        gid = self._ids.get(ref)
        if gid is None:
            gid = self._ids[ref] = len(self.tags)
            self.tags.append(ref)
        return gid

    def ids(self, tags: tuple[TagRef, ...], dtype: npt.DTypeLike = np.int64) -> npt.NDArray[Any]:
        """Return the ids of a batch's tag table."""
        return np.fromiter((self.id(t) for t in tags), dtype, len(tags))

    def copy(self) -> TagRegistry:
        """Return an independent registry with the same ids."""
        new = TagRegistry()
        new.tags = list(self.tags)
        new._ids = dict(self._ids)
        return new


@dataclass(frozen=True, slots=True)
class TagOrder:
    """A batch's points grouped by tag, in arrival order within each tag.

    ``before[i]`` is the newest time the tag had reached before point ``i`` arrived (from
    ``known``, the per-tag state of earlier batches, and from the tag's earlier points in this
    batch); ``newest[i]`` includes point ``i`` itself; ``last`` marks each tag's last point.
    Operators that judge points by their tag's own order (lateness, freshness) share this.
    """

    order: npt.NDArray[np.intp]
    gid: npt.NDArray[np.int64]
    ts: npt.NDArray[np.int64]
    before: npt.NDArray[np.int64]
    newest: npt.NDArray[np.int64]
    last: npt.NDArray[np.bool_]


LEADING_TRUE = np.ones(1, np.bool_)  # prepended to mark run starts (np.r_ is slow)


def run_max(g: npt.NDArray[Any], t: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Return the running maximum of ``t`` within runs of equal ``g`` (``-1 <= t < 2**43``)."""
    first = np.concatenate((LEADING_TRUE, g[1:] != g[:-1]))
    off = (np.cumsum(first).astype(np.int64) - 1) << 44  # runs never mix in one scan
    out: npt.NDArray[np.int64] = np.maximum.accumulate(t + off) - off
    return out


def tag_order(
    gid: npt.NDArray[Any], ts: npt.NDArray[np.int64], known: npt.NDArray[np.int64]
) -> TagOrder:
    """Group points by tag in arrival order; see :class:`TagOrder` (``ts < 2**43``)."""
    order = np.argsort(gid, kind="stable")
    g, t = gid[order].astype(np.int64), ts[order]
    brk = np.concatenate((LEADING_TRUE, g[1:] != g[:-1]))
    newest = run_max(g, t)
    floor = np.iinfo(np.int64).min // 2
    before = np.concatenate(((floor,), newest[:-1]))
    before[brk] = floor
    return TagOrder(order, g, t, np.maximum(before, known[g]), newest, np.append(brk[1:], True))


class PickleCopy:
    """Deep copies through pickle.

    Bytewax snapshots operator state at every epoch (a deep copy), with or without recovery.
    For states made of numpy arrays and small tables, a pickle round trip is many times faster
    than ``copy.deepcopy``'s object walk.
    """

    def __deepcopy__(self, memo: dict[int, Any]) -> Any:
        return pickle.loads(pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL))


class TableCache(Generic[T]):
    """Per-tag-table results keyed by the table's identity.

    Sources reuse one tag-table tuple for all their batches, so operators resolve each table
    (rules per tag, tag ids) once instead of once per batch. Entries hold the table itself,
    which keeps its id valid; the cache is bounded and is not part of snapshots.
    """

    def __init__(self, build: Callable[[tuple[TagRef, ...]], T], *, size: int = 64) -> None:
        self._build = build
        self._size = size
        self._items: dict[int, tuple[tuple[TagRef, ...], T]] = {}

    def get(self, tags: tuple[TagRef, ...]) -> T:
        """Return the cached result for ``tags``, building it on first sight."""
        hit = self._items.get(id(tags))
        if hit is not None and hit[0] is tags:
            return hit[1]
        value = self._build(tags)
        if len(self._items) >= self._size:
            self._items.pop(next(iter(self._items)))
        self._items[id(tags)] = (tags, value)
        return value

    def __getstate__(self) -> dict[str, Any]:
        return {"build": self._build, "size": self._size}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._build = state["build"]
        self._size = state["size"]
        self._items = {}


def stable_order(*keys: npt.NDArray[Any]) -> npt.NDArray[np.intp]:
    """Stable order by ``keys`` (most significant first), as :func:`numpy.lexsort` gives it.

    When the keys' ranges multiply to less than 2**62 they are packed into one int64 and sorted
    once (several times faster than lexsort on a month of points); otherwise lexsort.
    """
    order = reorder(*keys)
    return np.arange(len(keys[0]), dtype=np.intp) if order is None else order


def reorder(*keys: npt.NDArray[Any]) -> npt.NDArray[np.intp] | None:
    """:func:`stable_order`, or None when the rows already are in that order.

    History arrives in time order: checking is one pass, sorting and gathering several.
    """
    if not len(keys[0]):
        return None
    lows = [int(k.min()) for k in keys]
    spans = [int(k.max()) - lo + 1 for k, lo in zip(keys, lows, strict=True)]
    if math.prod(spans) >= 2**62:
        return np.lexsort(keys[::-1])
    packed = np.zeros(len(keys[0]), np.int64)
    for k, lo, span in zip(keys, lows, spans, strict=True):
        packed *= span
        packed += k.astype(np.int64, copy=False) - lo
    if bool((packed[1:] >= packed[:-1]).all()):
        return None
    return np.argsort(packed, kind="stable")
