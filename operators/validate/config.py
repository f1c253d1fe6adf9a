"""Configuration of the validate operator (the model the validator itself runs on)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import ConfigDict, Field

from flows.registry import OperatorModel
from operators.errors import RuleError

__all__ = ["KNOWN_CONVERSIONS", "RangeRule", "UnitConversion", "ValidateOp"]

KNOWN_CONVERSIONS: dict[tuple[str, str], tuple[float, float]] = {
    ("W", "kW"): (1e-3, 0.0),
    ("kW", "W"): (1e3, 0.0),
    ("kW", "MW"): (1e-3, 0.0),
    ("MW", "kW"): (1e3, 0.0),
    ("Wh", "kWh"): (1e-3, 0.0),
    ("kWh", "MWh"): (1e-3, 0.0),
    ("V", "kV"): (1e-3, 0.0),
    ("kV", "V"): (1e3, 0.0),
    ("F", "C"): (5.0 / 9.0, -160.0 / 9.0),
    ("K", "C"): (1.0, -273.15),
}


@dataclass(frozen=True, slots=True)
class RangeRule:
    """Values of tags matching ``tags`` must lie in ``[min, max]``.

    ``tags`` is a glob over the tag name, or over the path when it contains '/'; either bound
    may be omitted.
    """

    __pydantic_config__ = ConfigDict(extra="forbid")

    tags: str
    min: float | None = None
    max: float | None = None

    def __post_init__(self) -> None:
        if self.min is not None and self.max is not None and self.min > self.max:
            msg = f"min {self.min} is greater than max {self.max}"
            raise RuleError(msg)


@dataclass(frozen=True, slots=True)
class UnitConversion:
    """Convert matching tags from ``from_unit`` to ``to_unit``: ``v * factor + offset``.

    ``factor`` and ``offset`` default to the known conversion of the unit pair (W/kW/MW,
    Wh/kWh/MWh, V/kV, F/K to C); other pairs need ``factor``.
    """

    __pydantic_config__ = ConfigDict(extra="forbid")

    from_unit: str
    to_unit: str
    factor: float | None = None
    offset: float | None = None
    tags: str = "*"

    def __post_init__(self) -> None:
        known = KNOWN_CONVERSIONS.get((self.from_unit, self.to_unit))
        if self.factor is None and known is None:
            msg = (
                f"no known conversion {self.from_unit} -> {self.to_unit}; give factor (and offset)"
            )
            raise RuleError(msg)
        if self.factor is None:
            object.__setattr__(self, "factor", known[0] if known else 1.0)
        if self.offset is None:
            object.__setattr__(self, "offset", known[1] if known else 0.0)
        if self.factor == 0:
            msg = f"unit conversion {self.from_unit}->{self.to_unit} has factor 0"
            raise RuleError(msg)


class ValidateOp(OperatorModel):
    """Validation: quality, non-finite values, clock skew, ranges, duplicates, units, staleness."""

    type: Literal["validate"]
    id: str = "validate"
    accept_quality: tuple[Literal["GOOD", "UNCERTAIN", "BAD"], ...] = ("GOOD", "UNCERTAIN")
    ranges: tuple[RangeRule, ...] = ()
    max_future_ms: int | None = Field(default=5_000, ge=0)
    max_past_ms: int | None = Field(default=7 * 86_400_000, ge=0)
    dedupe: bool = True
    conversions: tuple[UnitConversion, ...] = ()
    stale_after_ms: int | None = Field(default=None, gt=0)
    stale_tags: str = "*"
    stale_tolerance: float = Field(
        default=0.0, ge=0, description="a change up to this much still counts as unchanged"
    )
    stale_relative: bool = Field(
        default=False, description="stale_tolerance is a fraction of the previous value"
    )
    stale_ignore_values: tuple[float, ...] = Field(
        default=(), description="values never reported stale (e.g. 0: a PV plant at night)"
    )
    stale_ignore_below: float | None = Field(
        default=None, description="values below this are never reported stale"
    )
    stale_sun_above_deg: float | None = Field(
        default=None,
        description="points taken while the sun is lower at the site are never stale "
        "(needs site.latitude and site.longitude)",
    )
    coalesce_max_points: int = Field(
        default=50_000,
        ge=0,
        description="merge accepted batches up to this many points for the operators after "
        "validation (0: off)",
    )
    coalesce_max_delay_ms: int = Field(
        default=100, ge=0, description="longest a batch waits to be merged (wall time)"
    )
