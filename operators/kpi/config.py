"""Configuration of the kpi operator (the model the calculator itself runs on)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from flows.registry import OperatorModel

__all__ = ["KpiOp"]


class KpiOp(OperatorModel):
    """Site KPIs from closed windows: performance ratio, renewable share, power factor, ..."""

    type: Literal["kpi"]
    id: str = "kpi"
    window_ms: int = Field(default=60_000, gt=0)
    rated_kw: float = Field(default=200.0, gt=0)
    pv_power: str = "*/pv/*/ac_power"
    irradiance: str = "irradiance"
    load_power: str = "*/load/*/active_power"
    battery_power: str = "*/storage/*/power"
    power_factor: str = "power_factor"
    string_currents: str = "string*_current"
    imbalance_threshold: float = Field(default=0.2, gt=0)
    min_string_current_a: float = Field(default=1.0, ge=0)
    min_irradiance_w_m2: float = Field(default=50.0, ge=0)
