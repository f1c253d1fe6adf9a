"""Registers the anomaly operator: rules over a per-tag lookback window."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from flows.build import Build
from flows.registry import OperatorModel, register
from operators.anomaly.flow import anomalies
from operators.anomaly.logic import AnomalyRule

__all__ = ["AnomalyOp", "build"]


class AnomalyOp(OperatorModel):
    """Anomaly windows over points (drop, spike, deviation, rate, flatline, clipping, outlier, gap).

    Any rule may be gated on the sun's elevation at the site.
    """

    type: Literal["anomaly"]
    id: str = "anomaly"
    rules: tuple[AnomalyRule, ...] = Field(min_length=1)


@register(
    "operator", "anomaly", AnomalyOp, emits=("events",), needs=("points",), sample="sample.yaml"
)
def build(cfg: AnomalyOp, b: Build) -> None:
    """Add raised/cleared anomaly events to ``events``."""
    b.add("events", anomalies(cfg.id, b.points, cfg.rules, location=b.site.site.place))
