"""Registers the alarm operator: thresholds with hysteresis."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from flows.build import Build
from flows.registry import OperatorModel, register
from operators.alarm.flow import alarms
from operators.alarm.logic import AlarmRule

__all__ = ["AlarmOp", "build"]


class AlarmOp(OperatorModel):
    """Threshold alarms over points: raise past the limit, clear past the deadband."""

    type: Literal["alarm"]
    id: str = "alarm"
    rules: tuple[AlarmRule, ...] = Field(min_length=1)


@register("operator", "alarm", AlarmOp, emits=("events",), needs=("points",), sample="sample.yaml")
def build(cfg: AlarmOp, b: Build) -> None:
    """Add raised/cleared alarm events to ``events``."""
    b.add("events", alarms(cfg.id, b.points, cfg.rules))
