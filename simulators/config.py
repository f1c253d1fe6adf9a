"""Configuration of the simulator input."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field, field_validator

from flows.registry import InputModel
from simulators.site import EnergySite, Fault, SiteLayout
from wire.records import TagRef

__all__ = ["SimulatorInput"]


class SimulatorInput(InputModel):
    """The built-in energy-site simulator, in process (no network)."""

    type: Literal["simulator"]
    id: str = "sim"
    interval_ms: int = Field(default=1000, gt=0)
    speed: float = Field(
        default=1.0,
        ge=0,
        description="simulated seconds per wall second; 0 = as fast as possible",
    )
    start: datetime | None = Field(
        default=None, description="simulated start time (aware); default: now"
    )
    duration_s: float | None = Field(default=None, gt=0, description="stop after this much")
    ticks_per_batch: int = Field(default=1, gt=0, le=100_000)
    seed: int = 42
    inverters: int = Field(default=2, ge=1, le=1000)
    production_line: bool = Field(
        default=False, description="add a press with states, a cycle and a reject counter"
    )
    faults: tuple[Fault, ...] = ()
    disorder_fraction: float = Field(
        default=0.0, ge=0, le=1, description="fraction of points delivered late"
    )
    disorder_max_delay_ms: int = Field(default=30_000, gt=0)

    def layout(self, enterprise: str, site: str) -> SiteLayout:
        """Return the simulated site's layout."""
        return SiteLayout(
            enterprise=enterprise,
            site=site,
            inverters=self.inverters,
            production_line=self.production_line,
        )

    def sampled_tags(self, enterprise: str, site: str) -> dict[TagRef, int]:
        """Every simulated tag: one sample each ``interval_ms``."""
        layout = self.layout(enterprise, site)
        sim = EnergySite(layout=layout, start_ms=0, interval_ms=self.interval_ms)
        return dict.fromkeys(sim.tags, self.interval_ms)

    @field_validator("start")
    @classmethod
    def _aware(cls, v: datetime | None) -> datetime | None:
        if v is not None and v.tzinfo is None:
            msg = "start must include a timezone, e.g. 2026-01-01T00:00:00Z"
            raise ValueError(msg)
        return v
