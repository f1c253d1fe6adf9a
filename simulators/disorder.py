"""Network disorder for simulated streams: delay a fraction of points, deterministically.

Real edge links reorder and delay samples (store-and-forward gateways, retries). ``Disorder``
holds back a seeded random fraction of each batch and releases every held point once the
simulated clock passes its release time, so the stream arrives out of order and, with delays
longer than a flow's allowed lateness, late.
"""

from __future__ import annotations

import numpy as np

from simulators.errors import SimulatorSetupError
from wire.records import PointBatch

__all__ = ["Disorder"]


class Disorder:
    """Delay ``fraction`` of points by a uniform ``(0, max_delay_ms]``."""

    def __init__(self, *, fraction: float, max_delay_ms: int, seed: int = 0) -> None:
        if not 0 <= fraction <= 1:
            msg = f"fraction must be in [0, 1], got {fraction}"
            raise SimulatorSetupError(msg)
        if max_delay_ms <= 0:
            msg = f"max_delay_ms must be positive, got {max_delay_ms}"
            raise SimulatorSetupError(msg)
        self.fraction = fraction
        self.max_delay_ms = max_delay_ms
        self._rng = np.random.default_rng(seed)
        self._held: list[PointBatch] = []
        self._release: list[np.ndarray] = []

    @property
    def held(self) -> int:
        """Number of points currently held back."""
        return sum(len(b) for b in self._held)

    def apply(self, batch: PointBatch, now_ms: int) -> PointBatch:
        """Return what arrives by ``now_ms``: the batch minus held points plus released ones."""
        delay = self._rng.uniform(0, 1, len(batch)) < self.fraction
        if delay.any():
            held = batch.select(delay)
            jitter = self._rng.integers(1, self.max_delay_ms + 1, len(held))
            self._held.append(held)
            self._release.append(held.ts_ms + jitter)
            batch = batch.select(~delay)
        out = [batch]
        keep_b, keep_r = [], []
        for b, r in zip(self._held, self._release, strict=True):
            due = r <= now_ms
            if due.any():
                out.append(b.select(due))
            if not due.all():
                keep_b.append(b.select(~due))
                keep_r.append(r[~due])
        self._held, self._release = keep_b, keep_r
        return PointBatch.concat(out).with_meta(source=batch.source, received_ms=batch.received_ms)

    def drain(self) -> PointBatch:
        """Release everything still held (end of input)."""
        out = PointBatch.concat(self._held)
        self._held, self._release = [], []
        return out
