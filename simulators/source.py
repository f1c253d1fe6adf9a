"""Bytewax source over the in-process energy-site simulator."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from typing_extensions import override

from flows.lifecycle import stop_requested
from simulators.config import SimulatorInput
from simulators.disorder import Disorder
from simulators.site import EnergySite, SiteLayout
from wire.records import PointBatch, now_ms, to_ms

__all__ = ["SimulatorSource"]

log = logging.getLogger(__name__)
_STATUS_EVERY_MS = 10_000


@dataclass
class _SimState:
    site: EnergySite
    disorder: Disorder | None


class _SimPartition(StatefulSourcePartition[PointBatch, _SimState]):
    def __init__(self, src: SimulatorSource, resume: _SimState | None) -> None:
        self.src = src
        self.disorder: Disorder | None = None
        if resume is not None:
            self.site = resume.site
            self.disorder = resume.disorder
        else:
            start = src.start_ms
            if start is None:
                start = now_ms() - now_ms() % src.cfg.interval_ms
            self.site = EnergySite(
                layout=src.layout,
                start_ms=start,
                interval_ms=src.cfg.interval_ms,
                seed=src.cfg.seed,
                faults=src.cfg.faults,
                source=src.name,
            )
            if src.cfg.disorder_fraction > 0:
                self.disorder = Disorder(
                    fraction=src.cfg.disorder_fraction,
                    max_delay_ms=src.cfg.disorder_max_delay_ms,
                    seed=src.cfg.seed + 1,
                )
        self.wall0_ms = now_ms()
        self.sim0_ms = self.site.now_ms
        self.end_ms = (
            None
            if src.cfg.duration_s is None
            else self.site.start_ms + round(src.cfg.duration_s * 1000)
        )
        self.points = 0
        self.next_status_ms = self.wall0_ms + _STATUS_EVERY_MS
        log.info(
            "%s: simulating %s/%s (%d tags every %d ms) from %s at speed %s%s",
            src.name,
            self.site.layout.enterprise,
            self.site.layout.site,
            len(self.site.tags),
            src.cfg.interval_ms,
            datetime.fromtimestamp(self.site.now_ms / 1000, tz=UTC).isoformat(),
            src.cfg.speed or "max",
            f" for {src.cfg.duration_s:g} s" if src.cfg.duration_s else "",
        )

    def _due_ticks(self, wall_ms: int) -> int:
        if self.src.cfg.speed == 0:
            return self.src.cfg.ticks_per_batch
        sim_now = self.sim0_ms + (wall_ms - self.wall0_ms) * self.src.cfg.speed
        due = int((sim_now - self.site.now_ms) // self.src.cfg.interval_ms) + 1
        return max(0, min(due, self.src.cfg.ticks_per_batch))

    @override
    def next_batch(self) -> list[PointBatch]:
        ended = self.end_ms is not None and self.site.now_ms >= self.end_ms
        if ended or stop_requested():
            if self.disorder is not None and self.disorder.held:
                rest = self.disorder.drain()
                self.points += len(rest)
                return [rest]
            verb = "reached the end" if ended else "stopped"
            log.info("%s: %s after %d points", self.src.name, verb, self.points)
            raise StopIteration
        wall = now_ms()
        ticks = self._due_ticks(wall)
        if self.end_ms is not None:
            left = -(-(self.end_ms - self.site.now_ms) // self.src.cfg.interval_ms)
            ticks = min(ticks, left)
        if wall >= self.next_status_ms:
            self.next_status_ms = wall + _STATUS_EVERY_MS
            log.info(
                "%s: %d points so far, simulated time %s",
                self.src.name,
                self.points,
                datetime.fromtimestamp(self.site.now_ms / 1000, tz=UTC).isoformat(),
            )
        if ticks <= 0:
            return []
        batch = self.site.step(ticks)
        if self.disorder is not None:
            # Tick by tick, so the arrival order does not depend on how ticks were batched.
            n = len(self.site.tags)
            interval = self.site.interval_ms
            parts = []
            for k in range(ticks):
                tick = batch.select(np.arange(len(batch)) // n == k)
                parts.append(self.disorder.apply(tick, int(tick.ts_ms[0]) + interval))
            batch = PointBatch.concat(parts).with_meta(
                source=batch.source, received_ms=batch.received_ms
            )
        self.points += len(batch)
        return [batch]

    @override
    def next_awake(self) -> datetime | None:
        if self.src.cfg.speed == 0:
            return None
        due_sim = self.site.now_ms - self.sim0_ms
        due_wall = self.wall0_ms + due_sim / self.src.cfg.speed
        return datetime.fromtimestamp(due_wall / 1000, tz=UTC)

    @override
    def snapshot(self) -> _SimState:
        # The simulator state is small; a copy of it is the exact resume position.
        return copy.deepcopy(_SimState(self.site, self.disorder))


@dataclass(frozen=True)
class SimulatorSource(FixedPartitionedSource[PointBatch, _SimState]):
    """Emits the simulated site's samples as point batches.

    ``speed`` is simulated seconds per wall second (0 = as fast as possible); without a
    ``start`` the simulation starts now. Stops after ``duration_s`` if given.
    """

    cfg: SimulatorInput
    layout: SiteLayout = field(default_factory=SiteLayout)

    @property
    def name(self) -> str:
        """The input's id, used as the source name of its batches."""
        return self.cfg.id

    @property
    def start_ms(self) -> int | None:
        """The configured simulated start time."""
        return None if self.cfg.start is None else to_ms(self.cfg.start)

    @override
    def list_parts(self) -> list[str]:
        return [self.name]

    @override
    def build_part(
        self, step_id: str, for_part: str, resume_state: _SimState | None
    ) -> _SimPartition:
        return _SimPartition(self, resume_state)
