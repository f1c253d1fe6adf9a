"""Registers the aggregate operator: event-time tumbling windows with exact rollups."""

from __future__ import annotations

from functools import partial
from typing import Literal

import bytewax.operators as op
from pydantic import Field, model_validator

from flows.build import Build
from flows.registry import OperatorModel, register
from operators.aggregate.flow import aggregate, late_dead_letters

__all__ = ["AggregateOp", "build"]


class AggregateOp(OperatorModel):
    """Event-time tumbling windows: a base window plus rollups built from it."""

    type: Literal["aggregate"]
    id: str = "aggregate"
    window_ms: int = Field(default=60_000, gt=0)
    rollup_ms: tuple[int, ...] = (900_000,)
    allowed_lateness_ms: int = Field(default=5_000, ge=0)
    idle_close: bool = Field(
        default=True,
        description="advance the watermark with wall time so idle tags' windows close; "
        "turn off for deterministic replays",
    )
    max_gap_ms: int | None = Field(
        default=None,
        gt=0,
        description="energy and time-weighted means interpolate between points at most this "
        "far apart (default and at most window_ms)",
    )
    max_source_lag_ms: int = Field(
        default=300_000,
        ge=0,
        description="closed windows are kept until the shard's newest point is this far past "
        "them, so a source lagging (or starting) up to this much behind gives the same rows",
    )
    reopen_horizon_ms: int | None = Field(
        default=None,
        ge=0,
        description="ignored (kept for old site files): closed windows are kept until every "
        "tag in them has passed their end + allowed_lateness_ms",
    )

    def for_replay(self) -> AggregateOp:
        """Windows close on event time only: a replay must not depend on wall time."""
        return self.model_copy(update={"idle_close": False})

    def revision_horizon_ms(self) -> int:
        """Return how long a window row (keyed by its start) may be re-emitted: end plus lags."""
        return (
            max((self.window_ms, *self.rollup_ms))
            + self.allowed_lateness_ms
            + (self.max_gap_ms or self.window_ms)
            + self.max_source_lag_ms
        )

    @model_validator(mode="after")
    def _multiples(self) -> AggregateOp:
        if self.max_gap_ms is not None and self.max_gap_ms > self.window_ms:
            msg = (
                f"max_gap_ms {self.max_gap_ms} must be at most window_ms {self.window_ms} "
                "(a longer gap would span a window without samples)"
            )
            raise ValueError(msg)
        for r in self.rollup_ms:
            if r <= self.window_ms or r % self.window_ms:
                msg = f"rollup_ms {r} must be a multiple of window_ms {self.window_ms}"
                raise ValueError(msg)
        return self


@register(
    "operator",
    "aggregate",
    AggregateOp,
    emits=("aggregates", "late"),
    needs=("points",),
    sample="sample.yaml",
)
def build(cfg: AggregateOp, b: Build) -> None:
    """Add closed windows to ``aggregates`` and late points to ``late``."""
    agg = aggregate(
        cfg.id,
        b.points,
        window_ms=cfg.window_ms,
        rollup_ms=cfg.rollup_ms,
        allowed_lateness_ms=cfg.allowed_lateness_ms,
        idle_close=cfg.idle_close,
        reopen_horizon_ms=cfg.reopen_horizon_ms,
        zone=b.site.site.timezone,
        max_gap_ms=cfg.max_gap_ms,
        max_source_lag_ms=cfg.max_source_lag_ms,
    )
    late = op.flat_map(
        f"{cfg.id}_late",
        agg.late,
        partial(late_dead_letters, stage=cfg.id, window_ms=cfg.window_ms),
    )
    b.add("aggregates", agg.aggregates)
    b.add("late", late)
