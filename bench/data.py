"""Synthetic benchmark data: many tags, fixed rate, 1% invalid and 1% late points.

Generated with numpy per batch (cheap next to the work measured), deterministic per seed.
Tags are grouped in machines of ten, named like the simulator's so the demo rules, KPIs and
model features apply: ac_power, dc_power, efficiency, temperature, dc_voltage, soc and four
string currents; one weather machine carries irradiance and ambient temperature.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from wire.records import PointBatch, TagRef

__all__ = ["BenchData", "make_tags"]

MACHINE_TAGS = (
    ("ac_power", "kW", 60.0, 5.0),
    ("dc_power", "kW", 62.0, 5.0),
    ("efficiency", "%", 96.5, 0.3),
    ("temperature", "C", 45.0, 1.0),
    ("dc_voltage", "V", 620.0, 2.0),
    ("soc", "%", 60.0, 0.2),
    ("string1_current", "A", 25.0, 0.3),
    ("string2_current", "A", 25.0, 0.3),
    ("string3_current", "A", 25.0, 0.3),
    ("string4_current", "A", 25.0, 0.3),
)
START_MS = 1_780_304_400_000  # 2026-06-01T09:00Z


def make_tags(n_tags: int) -> tuple[tuple[TagRef, ...], np.ndarray, np.ndarray]:
    """Return (tags, mean, noise) for ``n_tags`` tags (rounded to whole machines + weather)."""
    tags = [
        TagRef("bench/site/weather/met/met-01/irradiance", "W/m2"),
        TagRef("bench/site/weather/met/met-01/ambient_temperature", "C"),
    ]
    means, noise = [800.0, 25.0], [5.0, 0.1]
    for m in range(max(1, (n_tags - 2) // len(MACHINE_TAGS))):
        for name, unit, mean, sd in MACHINE_TAGS:
            tags.append(TagRef(f"bench/site/pv/line-{m // 100:03d}/inv-{m:05d}/{name}", unit))
            means.append(mean)
            noise.append(sd)
    return tuple(tags), np.asarray(means), np.asarray(noise)


@dataclass
class BenchData:
    """``n_tags`` tags at ``rate_hz`` for ``duration_s``, in batches of ``batch_ms``."""

    n_tags: int
    rate_hz: float
    duration_s: float
    batch_ms: int = 1000
    invalid_fraction: float = 0.01
    late_fraction: float = 0.01
    late_by_ms: int = 120_000
    seed: int = 1

    def __post_init__(self) -> None:
        self.tags, self.mean, self.noise = make_tags(self.n_tags)

    @property
    def total_points(self) -> int:
        """Points the generator yields in all."""
        return int(len(self.tags) * self.rate_hz * self.duration_s)

    def batches(self) -> Iterator[PointBatch]:
        """Yield batches in time order; late points carry timestamps from closed windows."""
        rng = np.random.default_rng(self.seed)
        n = len(self.tags)
        step_ms = int(1000 / self.rate_hz)
        ticks_per_batch = max(1, self.batch_ms // step_ms)
        total_ticks = int(self.duration_s * self.rate_hz)
        idx_one = np.arange(n, dtype=np.int32)
        for t0 in range(0, total_ticks, ticks_per_batch):
            k = min(ticks_per_batch, total_ticks - t0)
            ts = START_MS + (t0 + np.repeat(np.arange(k), n)) * step_ms
            idx = np.tile(idx_one, k)
            val = self.mean[idx] + rng.normal(0.0, 1.0, k * n) * self.noise[idx]
            m = k * n
            bad = rng.random(m) < self.invalid_fraction
            val[bad] = np.where(rng.random(int(bad.sum())) < 0.5, np.nan, -1e9)
            late = rng.random(m) < self.late_fraction
            ts = np.where(late, ts - self.late_by_ms, ts)
            yield PointBatch(
                self.tags,
                idx,
                ts.astype(np.int64),
                val,
                np.zeros(m, np.uint8),
                source="bench",
                received_ms=int(ts.max()),
            )
