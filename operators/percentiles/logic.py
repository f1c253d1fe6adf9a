"""Percentiles per tag and event-time window: exact, for the base window and its rollups.

For each tag matching ``tags`` and each window size (``window_ms`` and every ``rollup_ms``),
the operator keeps the values of the windows still open and, when a window closes, emits
one KPI row per quantile (``name``: ``p50``, ``p95``, ``p99`` for ``quantiles`` 0.5, 0.95,
0.99; ``path``: the tag; ``unit``: the tag's). Quantiles are numpy's default (linear
interpolation between the two nearest ranks, as ``numpy.quantile`` and pandas compute them),
exact for every size: a rollup's values are kept until it closes, so its memory is the
rollup's length times the tag's sampling rate (15 minutes at 1 Hz: 900 values per tag).

Missing values (NaN) take no part. A window of a tag closes when that tag has a point
``allowed_lateness_ms`` past its end (or at the end of the input). A point for a window of
its tag that already closed is late: it goes to ``late`` with the reason. Both are decided
from each tag's own points in arrival order, so rows and late points are the same for any
batching and interleaving of sources.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from operators._state import PickleCopy, TableCache, TagRegistry, run_max, tag_matches
from operators.errors import RuleError
from wire.records import Kpi, PointBatch, TagRef

__all__ = ["PercentileWindows", "grouped_quantiles", "quantile_name"]

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]


def quantile_name(q: float) -> str:
    """``p50`` for 0.5, ``p99.9`` for 0.999."""
    return f"p{round(q * 100, 6):g}"


def grouped_quantiles(group: I64, value: F64, qs: tuple[float, ...]) -> tuple[I64, F64]:
    """Return each group's id and its quantiles (rows: groups, columns: ``qs``).

    ``numpy.quantile``'s default (linear) method, for all groups at once.
    """
    order = np.lexsort((value, group))
    g, v = group[order], value[order]
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    sizes = np.diff(np.r_[starts, len(g)])
    h = (sizes[:, None] - 1) * np.asarray(qs)[None, :]
    lo = np.floor(h).astype(np.int64)
    hi = np.minimum(lo + 1, sizes[:, None] - 1)
    base = starts[:, None]
    a, b = v[base + lo], v[base + hi]
    return g[starts], a + (h - lo) * (b - a)


@dataclass
class _Pending:
    """One window size's values of open windows."""

    gid: npt.NDArray[np.int32] = field(default_factory=lambda: np.empty(0, np.int32))
    ts: I64 = field(default_factory=lambda: np.empty(0, np.int64))
    value: F64 = field(default_factory=lambda: np.empty(0, np.float64))


@dataclass
class PercentileWindows(PickleCopy):
    """Exact per-tag quantiles per window size; see the module docstring."""

    tags: str = "*"
    window_ms: int = 60_000
    rollup_ms: tuple[int, ...] = (900_000,)
    quantiles: tuple[float, ...] = (0.5, 0.95, 0.99)
    allowed_lateness_ms: int = 5_000
    _reg: TagRegistry = field(default_factory=TagRegistry)
    _newest: I64 = field(default_factory=lambda: np.empty(0, np.int64))
    _closed_to: I64 = field(default_factory=lambda: np.empty(0, np.int64))  # per tag, base
    _pending: dict[int, _Pending] = field(default_factory=dict)

    def __post_init__(self) -> None:
        sizes = (self.window_ms, *self.rollup_ms)
        if min(sizes) <= 0 or any(r % self.window_ms for r in self.rollup_ms):
            msg = "percentiles: window_ms must be positive and every rollup_ms a multiple of it"
            raise RuleError(msg)
        if not self.quantiles or not all(0 <= q <= 1 for q in self.quantiles):
            msg = "percentiles: quantiles must be between 0 and 1, e.g. [0.5, 0.95, 0.99]"
            raise RuleError(msg)
        if self.allowed_lateness_ms < 0:
            msg = "percentiles: allowed_lateness_ms must be >= 0"
            raise RuleError(msg)
        for size in sizes:
            self._pending.setdefault(size, _Pending())
        self._luts: TableCache[npt.NDArray[np.int32]] = TableCache(self._lookup)

    def __getstate__(self) -> dict[str, object]:
        state = dict(self.__dict__)
        state.pop("_luts", None)
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self._luts = TableCache(self._lookup)

    def _lookup(self, tags: tuple[TagRef, ...]) -> npt.NDArray[np.int32]:
        return np.array(
            [self._reg.id(t) if tag_matches(self.tags, t) else -1 for t in tags], np.int32
        )

    def _grow(self) -> None:
        n = len(self._reg)
        if len(self._newest) < n:
            extra = n - len(self._newest)
            self._newest = np.r_[self._newest, np.full(extra, -(1 << 62), np.int64)]
            self._closed_to = np.r_[self._closed_to, np.full(extra, -(1 << 62), np.int64)]

    def process(self, batch: PointBatch) -> tuple[list[Kpi], PointBatch]:
        """Add a batch; return the rows of windows now closed, and the late points."""
        if not len(batch):
            return [], batch.select(np.zeros(0, np.bool_))
        gid = self._luts.get(batch.tags)[batch.tag_idx]
        sel = (gid >= 0) & ~np.isnan(batch.value)  # a missing value has no rank
        live = batch.live()
        if live is not None:
            sel &= live
        self._grow()
        idx = np.flatnonzero(sel)
        g, ts, val = gid[idx], batch.ts_ms[idx], batch.value[idx]
        late = np.zeros(len(batch), np.bool_)
        out: list[Kpi] = []
        # Points in arrival order per tag: each is late or not by its tag's newest so far.
        order = np.argsort(g, kind="stable")
        g, ts, val, idx = g[order], ts[order], val[order], idx[order]
        brk = np.r_[True, g[1:] != g[:-1]] if len(g) else np.zeros(0, np.bool_)
        run = run_max(g.astype(np.int64), ts) if len(g) else ts
        prior = np.r_[-(1 << 62), run[:-1]]
        prior[brk] = -(1 << 62)
        newest_before = np.maximum(prior, self._newest[g])
        # A point whose base window its tag has closed (passed by end + lateness) is late;
        # rollups end no earlier, so the others are open in every size.
        start = ts - ts % self.window_ms
        closed = start + self.window_ms + self.allowed_lateness_ms <= newest_before
        closed |= start + self.window_ms <= self._closed_to[g]
        late[idx[closed]] = True
        keep = ~closed
        for p in self._pending.values():
            p.gid = np.r_[p.gid, g[keep].astype(np.int32)]
            p.ts = np.r_[p.ts, ts[keep]]
            p.value = np.r_[p.value, val[keep]]
        if len(g):
            ends = np.flatnonzero(np.r_[brk[1:], True])
            np.maximum.at(self._newest, g[ends], run[ends])
        for size, p in self._pending.items():
            out += self._close(size, p, self._newest - self.allowed_lateness_ms)
        return out, batch.select(late)

    def flush(self) -> list[Kpi]:
        """At the end of the input: every open window."""
        out: list[Kpi] = []
        for size, p in self._pending.items():
            out += self._close(size, p, np.full(len(self._newest), 1 << 62, np.int64))
        return out

    def _close(self, size: int, p: _Pending, reach: I64) -> list[Kpi]:
        """Emit the windows of size ``size`` that end at or before their tag's ``reach``."""
        if not len(p.gid):
            return []
        start = p.ts - p.ts % size
        done = start + size <= reach[p.gid]
        if not done.any():
            return []
        g, s, v = p.gid[done].astype(np.int64), start[done], p.value[done]
        p.gid, p.ts, p.value = p.gid[~done], p.ts[~done], p.value[~done]
        key = g * (1 << 42) + s  # tag ids above the time bits; epoch ms < 2**42
        keys, q = grouped_quantiles(key, v, self.quantiles)
        tags, starts = keys >> 42, keys & ((1 << 42) - 1)
        if size == self.window_ms:
            np.maximum.at(self._closed_to, tags, starts + size)
        counts = np.bincount(np.searchsorted(keys, key), minlength=len(keys))
        names = [quantile_name(x) for x in self.quantiles]
        out = []
        for k in range(len(keys)):
            ref = self._reg[int(tags[k])]
            details = {"count": int(counts[k])}
            for j, name in enumerate(names):
                out.append(
                    Kpi(ref.path, name, size, int(starts[k]), float(q[k, j]), ref.unit, details)
                )
        return out
