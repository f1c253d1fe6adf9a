"""Registers the kpi operator: site KPIs from closed windows."""

from __future__ import annotations

from functools import partial

from flows.build import Build
from flows.registry import register
from operators._flow import score_windows
from operators.kpi.config import KpiOp
from operators.kpi.logic import KpiCalculator

__all__ = ["build"]


@register(
    "operator",
    "kpi",
    KpiOp,
    emits=("kpis", "events"),
    needs=("aggregates",),
    sample="sample.yaml",
)
def build(cfg: KpiOp, b: Build) -> None:
    """Add per-window KPIs to ``kpis`` and imbalance events to ``events``."""
    scored = score_windows(
        cfg.id,
        b.stream("aggregates", cfg.id),
        partial(KpiCalculator, cfg, levels=b.shard_levels),
        levels=b.shard_levels,
    )
    b.add("kpis", scored.kpis)
    b.add("events", scored.events)
