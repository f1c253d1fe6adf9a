"""Registers the validate operator (with coalescing of accepted batches)."""

from __future__ import annotations

from flows.build import Build
from flows.registry import register
from operators.validate.config import ValidateOp
from operators.validate.flow import coalesce, validate

__all__ = ["build"]


@register(
    "operator",
    "validate",
    ValidateOp,
    emits=("points", "dead_letters", "events"),
    needs=("points",),
    sample="sample.yaml",
)
def build(cfg: ValidateOp, b: Build) -> None:
    """Replace ``points`` with the accepted points; rejects go to ``dead_letters``."""
    out = validate(cfg.id, b.points, cfg, location=b.site.site.place)
    oks = out.oks
    if cfg.coalesce_max_points:
        oks = coalesce(
            f"{cfg.id}_coalesce",
            oks,
            max_points=cfg.coalesce_max_points,
            max_delay_ms=cfg.coalesce_max_delay_ms,
        )
    b.points = oks
    b.add("dead_letters", out.errs)
    b.add("events", out.events)
