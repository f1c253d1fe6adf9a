"""Registers the state operator: machine states as episodes, and OEE per machine."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from flows.build import Build
from flows.registry import OperatorModel, register
from operators.state.flow import machine_states
from operators.state.logic import StateMap

__all__ = ["StateOp", "build"]


class StateOp(OperatorModel):
    """Named machine states with start, end and duration; OEE per machine and window."""

    type: Literal["state"]
    id: str = "state"
    machines: tuple[StateMap, ...] = Field(min_length=1)

    def revision_horizon_ms(self) -> int:
        """Return how long an OEE row may still change (episodes change when they end)."""
        return max(
            (m.oee.window_ms + m.oee.allowed_lateness_ms for m in self.machines if m.oee),
            default=0,
        )


@register(
    "operator",
    "state",
    StateOp,
    emits=("events", "kpis"),
    needs=("points",),
    sample="sample.yaml",
)
def build(cfg: StateOp, b: Build) -> None:
    """Add state episodes to ``events`` and OEE rows to ``kpis``."""
    out = machine_states(cfg.id, b.points, cfg.machines)
    b.add("events", out.events)
    b.add("kpis", out.kpis)
