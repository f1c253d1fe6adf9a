"""Registers the percentiles operator: exact quantiles per tag, window and rollup."""

from __future__ import annotations

from functools import partial
from typing import Literal

import bytewax.operators as op
from pydantic import Field

from flows.build import Build
from flows.registry import OperatorModel, register
from operators.aggregate.flow import late_dead_letters
from operators.percentiles.flow import percentiles

__all__ = ["PercentilesOp", "build"]


class PercentilesOp(OperatorModel):
    """p50 / p95 / p99 (any quantiles) per tag and window, exact for every window size."""

    type: Literal["percentiles"]
    id: str = "percentiles"
    tags: str = "*"
    window_ms: int = Field(default=60_000, gt=0)
    rollup_ms: tuple[int, ...] = (900_000,)
    quantiles: tuple[float, ...] = (0.5, 0.95, 0.99)
    allowed_lateness_ms: int = Field(default=5_000, ge=0)

    def revision_horizon_ms(self) -> int:
        """Return how long after a row's start it may be written: its window plus lateness."""
        return max((self.window_ms, *self.rollup_ms)) + self.allowed_lateness_ms


@register(
    "operator",
    "percentiles",
    PercentilesOp,
    emits=("kpis", "late"),
    needs=("points",),
    sample="sample.yaml",
)
def build(cfg: PercentilesOp, b: Build) -> None:
    """Add quantile rows to ``kpis`` and late points to ``late``."""
    out = percentiles(
        cfg.id,
        b.points,
        tags=cfg.tags,
        window_ms=cfg.window_ms,
        rollup_ms=cfg.rollup_ms,
        quantiles=cfg.quantiles,
        allowed_lateness_ms=cfg.allowed_lateness_ms,
    )
    late = op.flat_map(
        f"{cfg.id}_late",
        out.late,
        partial(late_dead_letters, stage=cfg.id, window_ms=cfg.window_ms),
    )
    b.add("kpis", out.kpis)
    b.add("late", late)
