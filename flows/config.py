"""Site configuration: a YAML file validated by pydantic.

A site file declares the site identity, its inputs, the operator chain (in order) and the
sinks. :func:`load_site` returns a :class:`SiteConfig` or raises :class:`ConfigError` whose
message names the file and every bad field by its path (``operators.1.window_ms``).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from flows.errors import ConfigError

__all__ = [
    "DEMO_SITE",
    "AggregateOp",
    "ConsoleSink",
    "CustomOp",
    "EdgeflowSettings",
    "FaultConfig",
    "FileSink",
    "InputConfig",
    "OperatorConfig",
    "RangeConfig",
    "SimulatorInput",
    "SinkConfig",
    "SiteConfig",
    "SiteIdentity",
    "StreamName",
    "UnitConversionConfig",
    "ValidateOp",
    "load_site",
    "parse_site",
]

DEMO_SITE = Path(__file__).parent / "sites" / "demo.yaml"

StreamName = Literal["raw", "points", "aggregates", "events", "late", "dead_letters"]
ALL_STREAMS: tuple[StreamName, ...] = (
    "raw",
    "points",
    "aggregates",
    "events",
    "late",
    "dead_letters",
)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SiteIdentity(_Model):
    """Who the site is: the first two ISA-95 levels of every tag it produces."""

    enterprise: str = Field(min_length=1, pattern=r"^[^/\s]+$")
    site: str = Field(min_length=1, pattern=r"^[^/\s]+$")


# -- inputs ----------------------------------------------------------------------------------
class FaultConfig(_Model):
    """An injected simulator fault."""

    kind: Literal[
        "soc_drop",
        "power_spike",
        "efficiency_drop",
        "voltage_sag",
        "over_temp",
        "string_fault",
        "stuck_sensor",
        "bad_quality",
    ]
    asset: str
    start_s: float = Field(ge=0)
    duration_s: float = Field(gt=0)


class SimulatorInput(_Model):
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
    faults: tuple[FaultConfig, ...] = ()

    @field_validator("start")
    @classmethod
    def _aware(cls, v: datetime | None) -> datetime | None:
        if v is not None and v.tzinfo is None:
            msg = "start must include a timezone, e.g. 2026-01-01T00:00:00Z"
            raise ValueError(msg)
        return v


InputConfig = Annotated[SimulatorInput, Field(discriminator="type")]


# -- operators -------------------------------------------------------------------------------
class RangeConfig(_Model):
    """Allowed value range for tags matching a glob (tag name, or full path if it has '/')."""

    tags: str
    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _ordered(self) -> RangeConfig:
        if self.min is not None and self.max is not None and self.min > self.max:
            msg = f"min {self.min} is greater than max {self.max}"
            raise ValueError(msg)
        return self


class UnitConversionConfig(_Model):
    """Unit conversion; factor/offset default to the known conversion for the unit pair."""

    tags: str = "*"
    from_unit: str
    to_unit: str
    factor: float | None = None
    offset: float | None = None


class ValidateOp(_Model):
    """Validation: quality, range, timestamps, duplicates, units, staleness."""

    type: Literal["validate"]
    id: str = "validate"
    accept_quality: tuple[Literal["GOOD", "UNCERTAIN", "BAD"], ...] = ("GOOD", "UNCERTAIN")
    ranges: tuple[RangeConfig, ...] = ()
    max_future_ms: int | None = Field(default=5_000, ge=0)
    max_past_ms: int | None = Field(default=7 * 86_400_000, ge=0)
    dedupe: bool = True
    conversions: tuple[UnitConversionConfig, ...] = ()
    stale_after_ms: int | None = Field(default=None, gt=0)
    stale_tags: str = "*"


class AggregateOp(_Model):
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

    @model_validator(mode="after")
    def _multiples(self) -> AggregateOp:
        for r in self.rollup_ms:
            if r <= self.window_ms or r % self.window_ms:
                msg = f"rollup_ms {r} must be a multiple of window_ms {self.window_ms}"
                raise ValueError(msg)
        return self


class CustomOp(_Model):
    """A user operator: ``callable`` is ``package.module:function``.

    The function is called as ``fn(step_id, streams, **params)`` with the current
    :class:`flows.build.Streams` and must return a ``Streams``.
    """

    type: Literal["custom"]
    id: str
    callable: str = Field(pattern=r"^[\w.]+:[\w.]+$")
    params: dict[str, Any] = Field(default_factory=dict)


OperatorConfig = Annotated[ValidateOp | AggregateOp | CustomOp, Field(discriminator="type")]


# -- sinks -----------------------------------------------------------------------------------
class ConsoleSink(_Model):
    """Human-readable progress on stdout."""

    type: Literal["console"]
    id: str = "console"
    streams: tuple[StreamName, ...] = ("aggregates", "events", "late", "dead_letters")
    max_rows_per_window: int = Field(default=6, ge=0)


class FileSink(_Model):
    """JSON Lines files, one per stream, under ``dir``."""

    type: Literal["file"]
    id: str = "file"
    dir: Path = Path("out")
    streams: tuple[StreamName, ...] = ("aggregates", "events", "late", "dead_letters")


SinkConfig = Annotated[ConsoleSink | FileSink, Field(discriminator="type")]


class SiteConfig(_Model):
    """Root of a site file."""

    name: str = Field(min_length=1)
    site: SiteIdentity
    inputs: tuple[InputConfig, ...] = Field(min_length=1)
    operators: tuple[OperatorConfig, ...] = ()
    sinks: tuple[SinkConfig, ...] = Field(min_length=1)
    secrets: dict[str, SecretStr] = Field(default_factory=dict)

    @field_validator("inputs", "operators", "sinks")
    @classmethod
    def _unique_ids(cls, items: tuple[Any, ...]) -> tuple[Any, ...]:
        ids = [i.id for i in items]
        dups = sorted({i for i in ids if ids.count(i) > 1})
        if dups:
            msg = f"ids must be unique; repeated: {', '.join(dups)}"
            raise ValueError(msg)
        return items


def _format_errors(source: str, err: ValidationError) -> str:
    lines = [f"invalid site config {source}:"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(root)"
        lines.append(f"  {loc}: {e['msg']}")
    return "\n".join(lines)


def parse_site(data: Any, *, source: str = "<dict>") -> SiteConfig:
    """Validate already-parsed YAML/JSON data as a site config."""
    try:
        return SiteConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_errors(source, e)) from e


def load_site(path: str | Path) -> SiteConfig:
    """Load and validate a site YAML file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        msg = f"cannot read site config {p}: {e.strerror or e}"
        raise ConfigError(msg) from e
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        msg = f"site config {p} is not valid YAML: {e}"
        raise ConfigError(msg) from e
    if not isinstance(data, dict):
        msg = f"site config {p} must be a mapping at the top level"
        raise ConfigError(msg)
    return parse_site(data, source=str(p))


class EdgeflowSettings(BaseSettings):
    """Entry-point settings from the environment (``EDGEFLOW_*``)."""

    model_config = SettingsConfigDict(env_prefix="EDGEFLOW_", extra="ignore")

    site: Path = DEMO_SITE
    out_dir: Path | None = Field(default=None, description="overrides every file sink's dir")
    log_level: str = "INFO"
