"""OEE per machine and event-time window: availability x performance x quality.

The definitions follow the common OEE standard (Nakajima; as in ISO 22400's availability,
effectiveness and quality ratios), per machine and tumbling window ``[W0, W1)``:

- time in a state: each state sample holds until the machine's next state sample, or for
  ``max_gap_ms`` at most (a silent tag's time is no state at all), cut at the window bounds;
- planned time = time in any state - time in ``planned_downtime_states``;
- availability = run time (``run_states``) / planned time;
- count = the increases of the count counter between consecutive samples whose later sample
  lies in the window. A decrease is a counter reset (the new value counts from zero), or, with
  ``counter_max`` and a fall of more than half the range, a wrap (``value + counter_max + 1 -
  previous``); the same for the reject counter (or ``good_tag``: good parts directly);
- performance = ``ideal_cycle_s`` x count / run time (it exceeds 1 when the ideal cycle is set
  slower than the machine runs: it is reported as computed, not capped);
- quality = (count - rejects) / count;
- OEE = availability x performance x quality.

A ratio whose denominator is zero (no planned time, no run time, no parts) is absent, and so
is OEE then. A window is computed when each of the machine's tags has a sample at or after
``W1 + allowed_lateness_ms`` (or at the end of the input), from each tag's points in arrival
order, so the figures are the same for any batching and interleaving of sources.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from pydantic import ConfigDict

from operators._state import PickleCopy
from operators.errors import RuleError
from wire.records import Kpi

__all__ = ["OeeConfig", "OeeMachine", "counter_increments", "state_durations"]

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class OeeConfig:
    """OEE settings of the machines a state map covers (see the module docstring)."""

    __pydantic_config__ = ConfigDict(extra="forbid")

    window_ms: int = 900_000
    run_states: tuple[str, ...] = ("run",)
    planned_downtime_states: tuple[str, ...] = ()
    count_tag: str = "cycle_count"
    reject_tag: str | None = "reject_count"
    good_tag: str | None = None
    ideal_cycle_s: float = 1.0
    counter_max: int | None = None
    allowed_lateness_ms: int = 5_000

    def __post_init__(self) -> None:
        if self.window_ms <= 0 or self.ideal_cycle_s <= 0 or self.allowed_lateness_ms < 0:
            msg = "oee: window_ms and ideal_cycle_s must be positive, allowed_lateness_ms >= 0"
            raise RuleError(msg)
        if (self.reject_tag is None) == (self.good_tag is None):
            msg = "oee: give reject_tag or good_tag (one of them)"
            raise RuleError(msg)


def state_durations(
    ts: I64, codes: npt.NDArray[np.int32], n_codes: int, lo: int, hi: int, max_gap_ms: int
) -> F64:
    """Return ms spent in each state code within ``[lo, hi)``.

    Sample ``i`` holds from ``ts[i]`` until ``ts[i + 1]`` or ``ts[i] + max_gap_ms``, whichever
    comes first; the last sample holds for ``max_gap_ms`` at most.
    """
    if not len(ts):
        return np.zeros(n_codes)
    until = np.minimum(np.r_[ts[1:], np.iinfo(np.int64).max], ts + max_gap_ms)
    start, end = np.maximum(ts, lo), np.minimum(until, hi)
    held = np.clip(end - start, 0, None).astype(np.float64)
    return np.bincount(codes, weights=held, minlength=n_codes).astype(np.float64)


def counter_increments(values: F64, counter_max: int | None) -> F64:
    """Return the increase at each sample after the first (see the module docstring)."""
    prev, cur = values[:-1], values[1:]
    delta = cur - prev
    down = delta < 0
    if counter_max is not None:
        quarter = (counter_max + 1) / 4
        wrap = down & (prev >= counter_max + 1 - quarter) & (cur < quarter)
        delta = np.where(wrap, cur + counter_max + 1 - prev, delta)
        down &= ~wrap
    return np.where(down, cur, delta)


@dataclass
class _Series:
    """One tag's samples not yet behind every computed window (plus the one before)."""

    ts: I64 = field(default_factory=lambda: np.empty(0, np.int64))
    value: F64 = field(default_factory=lambda: np.empty(0, np.float64))

    @property
    def newest(self) -> int:
        return int(self.ts[-1]) if len(self.ts) else -1

    def add(self, ts: I64, value: F64) -> None:
        """Append samples that are newer than every earlier one (the tracker skips others)."""
        self.ts, self.value = np.r_[self.ts, ts], np.r_[self.value, value]

    def keep_from(self, t: int) -> None:
        """Drop samples before ``t`` except the last one before it."""
        cut = max(0, int(np.searchsorted(self.ts, t)) - 1)
        self.ts, self.value = self.ts[cut:], self.value[cut:]


@dataclass
class OeeMachine(PickleCopy):
    """One machine's OEE windows: state, count and reject samples in, KPI rows out."""

    path: str
    cfg: OeeConfig
    states: dict[float, str]
    default: str
    max_gap_ms: int
    state: _Series = field(default_factory=_Series)
    count: _Series = field(default_factory=_Series)
    other: _Series = field(default_factory=_Series)  # rejects or good parts
    next_start: int | None = None

    def feed(self, which: str, ts: I64, value: F64) -> None:
        """Add one tag's fresh samples (``state``, ``count`` or ``other``), rising in time."""
        getattr(self, which).add(ts, value)
        if self.next_start is None and which == "state" and len(ts):
            self.next_start = int(ts.min()) // self.cfg.window_ms * self.cfg.window_ms

    def due(self, *, final: bool = False) -> list[Kpi]:
        """Return the KPI rows of every window all tags have passed (at the end: every one)."""
        out: list[Kpi] = []
        w, late = self.cfg.window_ms, self.cfg.allowed_lateness_ms
        series = (self.state, self.count, self.other)
        while self.next_start is not None:
            start = self.next_start
            if final:
                if start > max(s.newest for s in series):
                    break
            elif min(s.newest for s in series) < start + w + late:
                break
            out += self._window(start, start + w)
            self.next_start = start + w
            for s in series:
                s.keep_from(self.next_start)
        return out

    def _window(self, lo: int, hi: int) -> list[Kpi]:
        names = sorted({*self.states.values(), self.default})
        code = {n: i for i, n in enumerate(names)}
        codes = np.array(
            [code[self.states.get(v, self.default)] for v in self.state.value.tolist()], np.int32
        )
        held = state_durations(self.state.ts, codes, len(names), lo, hi, self.max_gap_ms)
        in_state = {n: float(held[code[n]]) for n in names}
        run_ms = sum(in_state.get(n, 0.0) for n in self.cfg.run_states)
        planned_ms = sum(in_state.values()) - sum(
            in_state.get(n, 0.0) for n in self.cfg.planned_downtime_states
        )
        total = self._sum_in(self.count, lo, hi)
        other = self._sum_in(self.other, lo, hi)
        good = other if self.cfg.good_tag is not None else total - other
        ratios: dict[str, float | None] = {
            "availability": run_ms / planned_ms if planned_ms > 0 else None,
            "performance": self.cfg.ideal_cycle_s * total / (run_ms / 1000) if run_ms > 0 else None,
            "quality": good / total if total > 0 else None,
        }
        a, p, q = ratios.values()
        ratios["oee"] = a * p * q if a is not None and p is not None and q is not None else None
        details = {
            "run_s": run_ms / 1000,
            "planned_s": planned_ms / 1000,
            "count": total,
            "good": good,
            "state_s": {n: v / 1000 for n, v in in_state.items() if v},
        }
        return [
            Kpi(self.path, name, hi - lo, lo, value, "", details)
            for name, value in ratios.items()
            if value is not None
        ]

    def _sum_in(self, s: _Series, lo: int, hi: int) -> float:
        if len(s.ts) < 2:
            return 0.0
        inc = counter_increments(s.value, self.cfg.counter_max)
        at = s.ts[1:]
        return float(inc[(at >= lo) & (at < hi)].sum())
