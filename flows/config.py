"""Site configuration: a YAML file validated by pydantic.

A site file declares the site identity, its inputs, the operator chain (in order) and the
sinks. :func:`load_site` returns a :class:`SiteConfig` or raises :class:`ConfigError` whose
message names the file and every bad field by its path (``operators.1.window_ms``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
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
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from flows.errors import ConfigError

__all__ = [
    "DEMO_SITE",
    "AggregateOp",
    "AlarmOp",
    "AnomalyOp",
    "FeatureConfig",
    "InferenceOp",
    "KpiOp",
    "ModelConfig",
    "ConsoleSink",
    "CustomOp",
    "EdgeflowSettings",
    "FaultConfig",
    "FileSink",
    "InfluxSinkConfig",
    "KafkaConnection",
    "KafkaInput",
    "KafkaSinkConfig",
    "ModbusInput",
    "MqttInput",
    "OpcUaInput",
    "TimescaleSinkConfig",
    "expand_env",
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

StreamName = Literal["raw", "points", "aggregates", "kpis", "events", "late", "dead_letters"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


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
    disorder_fraction: float = Field(
        default=0.0, ge=0, le=1, description="fraction of points delivered late"
    )
    disorder_max_delay_ms: int = Field(default=30_000, gt=0)

    @field_validator("start")
    @classmethod
    def _aware(cls, v: datetime | None) -> datetime | None:
        if v is not None and v.tzinfo is None:
            msg = "start must include a timezone, e.g. 2026-01-01T00:00:00Z"
            raise ValueError(msg)
        return v


class KafkaConnection(_Model):
    """Broker address plus librdkafka settings passed through (SASL/TLS)."""

    bootstrap_servers: str = Field(min_length=1)
    config: dict[str, str] = Field(
        default_factory=dict, description="e.g. security.protocol, sasl.mechanism, ssl.ca.location"
    )
    sasl_password: SecretStr | None = None

    def client_config(self) -> dict[str, str]:
        """Return the librdkafka settings, secrets included."""
        cfg = dict(self.config)
        if self.sasl_password is not None:
            cfg["sasl.password"] = self.sasl_password.get_secret_value()
        return cfg


class KafkaInput(_Model):
    """Point batches from a raw topic (written by an edge flow's kafka sink)."""

    type: Literal["kafka"]
    id: str = "kafka"
    kafka: KafkaConnection
    topic: str = "edgeflow.raw"
    start: Literal["earliest", "latest"] = "earliest"
    start_time: datetime | None = Field(default=None, description="seek by time (aware)")
    end_time: datetime | None = Field(default=None, description="bounded replay: stop here")
    bounded: bool = Field(
        default=False, description="stop at the topic's end offsets as of start (replays)"
    )
    batch_size: int = Field(default=5000, gt=0)
    connect_timeout_s: float = Field(default=10.0, gt=0)


class RegisterConfig(_Model):
    """One Modbus tag (see connectors.modbus_codec.RegisterSpec)."""

    tag: str = Field(min_length=1, pattern=r"^[^/]+$")
    address: int = Field(ge=0, le=65535)
    table: Literal["holding", "input", "coil", "discrete"] = "holding"
    dtype: Literal["int16", "uint16", "int32", "uint32", "float32", "float64", "bool"] = "uint16"
    order: Literal["ABCD", "CDAB", "BADC", "DCBA"] = "ABCD"
    scale: float = 1.0
    offset: float = 0.0
    unit: str = ""


class ModbusDeviceConfig(_Model):
    """A device on the Modbus link: its id, ISA-95 place, poll interval and registers."""

    device_id: int = Field(ge=0, le=255)
    area: str
    line: str
    machine: str
    interval_ms: int = Field(default=1000, gt=0)
    registers: tuple[RegisterConfig, ...] = Field(min_length=1)


class ModbusInput(_Model):
    """Modbus TCP (or RTU framing over TCP) polling."""

    type: Literal["modbus"]
    id: str = "modbus"
    host: str
    port: int = Field(default=502, gt=0, le=65535)
    framer: Literal["tcp", "rtu"] = "tcp"
    timeout_s: float = Field(default=2.0, gt=0)
    max_gap: int = Field(default=8, ge=0, description="coalesce registers this close")
    max_polls: int | None = Field(default=None, gt=0, description="stop after N polls (tests)")
    devices: tuple[ModbusDeviceConfig, ...] = Field(min_length=1)


class MqttTopicConfig(_Model):
    """A plain topic template, e.g. ``plant/{area}/{line}/{machine}/{tag}``."""

    template: str
    payload: Literal["json", "number"] = "json"
    unit: str = ""


class MqttInput(_Model):
    """MQTT subscriptions: plain topic templates and/or Sparkplug B groups."""

    type: Literal["mqtt"]
    id: str = "mqtt"
    host: str
    port: int = Field(default=1883, gt=0, le=65535)
    client_id: str = "edgeflow"
    username: str | None = None
    password: SecretStr | None = None
    tls_ca: str | None = None
    qos: Literal[0, 1] = 1
    topics: tuple[MqttTopicConfig, ...] = ()
    sparkplug_groups: tuple[str, ...] = ()
    queue_size: int = Field(default=100_000, gt=0)
    overflow: Literal["block", "drop_oldest", "drop_newest"] = "block"
    max_messages: int | None = Field(default=None, gt=0, description="stop after N (tests)")

    @model_validator(mode="after")
    def _something(self) -> MqttInput:
        if not self.topics and not self.sparkplug_groups:
            msg = "give topics and/or sparkplug_groups"
            raise ValueError(msg)
        return self


class OpcUaNodeConfig(_Model):
    """An explicitly mapped OPC UA variable."""

    node_id: str
    area: str
    line: str
    machine: str
    tag: str = Field(pattern=r"^[^/]+$")
    unit: str = ""
    scale: float = 1.0
    offset: float = 0.0


class OpcUaInput(_Model):
    """OPC UA subscription or polling; nodes mapped explicitly and/or browsed from folders."""

    type: Literal["opcua"]
    id: str = "opcua"
    url: str = Field(pattern=r"^opc\.tcp://")
    mode: Literal["subscription", "polling"] = "subscription"
    interval_ms: int = Field(default=1000, gt=0)
    sampling_interval_ms: float = Field(default=500.0, ge=0)
    queue_size: int = Field(default=10, ge=0)
    deadband: float = Field(default=0.0, ge=0)
    nodes: tuple[OpcUaNodeConfig, ...] = ()
    browse: tuple[str, ...] = Field(
        default=(), description="folders whose <area>/<line>/<machine>/<variable> are read"
    )
    security: Literal["None", "Sign", "SignAndEncrypt"] = "None"
    cert: str | None = None
    key: str | None = None
    application_uri: str = "urn:edgeflow:client"
    username: str | None = None
    password: SecretStr | None = None
    max_samples: int | None = Field(default=None, gt=0, description="stop after N (tests)")

    @model_validator(mode="after")
    def _checks(self) -> OpcUaInput:
        if not self.nodes and not self.browse:
            msg = "give nodes and/or browse"
            raise ValueError(msg)
        if self.security != "None" and not (self.cert and self.key):
            msg = f"security {self.security} needs cert and key (python -m connectors.opcua_certs)"
            raise ValueError(msg)
        return self


InputConfig = Annotated[
    SimulatorInput | KafkaInput | ModbusInput | MqttInput | OpcUaInput,
    Field(discriminator="type"),
]


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
    coalesce_max_points: int = Field(
        default=50_000,
        ge=0,
        description="merge accepted batches up to this many points for the operators after "
        "validation (0: off)",
    )
    coalesce_max_delay_ms: int = Field(
        default=100, ge=0, description="longest a batch waits to be merged (wall time)"
    )


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
    reopen_horizon_ms: int | None = Field(
        default=None, ge=0, description="how long closed windows can be reopened; default window_ms"
    )

    @model_validator(mode="after")
    def _multiples(self) -> AggregateOp:
        for r in self.rollup_ms:
            if r <= self.window_ms or r % self.window_ms:
                msg = f"rollup_ms {r} must be a multiple of window_ms {self.window_ms}"
                raise ValueError(msg)
        return self


class AnomalyRuleConfig(_Model):
    """One anomaly-window rule (see :mod:`operators.anomaly`)."""

    id: str = Field(min_length=1)
    kind: Literal["drop", "spike", "deviation", "rate"]
    tags: str
    lookback_ms: int = Field(gt=0)
    threshold: float = 0.0
    relative: bool = True
    factor: float = 2.0
    min_baseline: float = 1e-9
    nominal: float | None = None
    ignore_below: float | None = None
    severity: str = "warning"

    @model_validator(mode="after")
    def _params(self) -> AnomalyRuleConfig:
        if self.kind == "deviation" and not self.nominal:
            msg = "a deviation rule needs a non-zero nominal"
            raise ValueError(msg)
        if self.kind == "spike" and self.factor <= 1:
            msg = "a spike rule needs factor > 1"
            raise ValueError(msg)
        if self.kind != "spike" and self.threshold <= 0:
            msg = f"a {self.kind} rule needs threshold > 0"
            raise ValueError(msg)
        return self


class AnomalyOp(_Model):
    """Anomaly windows over points."""

    type: Literal["anomaly"]
    id: str = "anomaly"
    rules: tuple[AnomalyRuleConfig, ...] = Field(min_length=1)


class AlarmRuleConfig(_Model):
    """A threshold alarm with hysteresis."""

    id: str = Field(min_length=1)
    tags: str
    limit: float
    deadband: float = Field(default=0.0, ge=0)
    direction: Literal["high", "low"] = "high"
    severity: Literal["critical", "major", "minor", "warning", "info"] = "major"


class AlarmOp(_Model):
    """Threshold alarms over points."""

    type: Literal["alarm"]
    id: str = "alarm"
    rules: tuple[AlarmRuleConfig, ...] = Field(min_length=1)


class KpiOp(_Model):
    """Site KPIs from closed windows (see :mod:`operators.kpi`)."""

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


class FeatureConfig(_Model):
    """One model input feature (see :class:`operators.inference.FeatureSpec`)."""

    name: str
    tags: str
    stat: Literal["mean", "min", "max", "std", "twa", "first", "last", "sum"] = "mean"
    reduce: Literal["mean", "max", "min", "imbalance"] = "mean"
    scope: Literal["asset", "site"] = "asset"
    scale: float = 1.0
    minus: str | None = None


class ModelConfig(_Model):
    """An ONNX model file; relative paths are resolved against the site file's folder."""

    name: str
    path: Path
    output: str
    column: int | None = None
    negate: bool = False
    threshold: float | None = None

    @field_validator("path")
    @classmethod
    def _resolve(cls, v: Path, info: ValidationInfo) -> Path:
        base = (info.context or {}).get("base_dir")
        path = v if v.is_absolute() or base is None else (Path(base) / v).resolve()
        if not path.is_file():
            msg = f"model file {path} does not exist"
            raise ValueError(msg)
        return path


class InferenceOp(_Model):
    """ONNX inference on per-asset features of closed windows."""

    type: Literal["inference"]
    id: str = "inference"
    window_ms: int = Field(default=60_000, gt=0)
    assets: str = Field(description="glob over machine paths, e.g. */pv/*/inv-*")
    features: tuple[FeatureConfig, ...] = Field(min_length=1)
    models: tuple[ModelConfig, ...] = Field(min_length=1)


class CustomOp(_Model):
    """A user operator: ``callable`` is ``package.module:function``.

    The function is called as ``fn(step_id, streams, **params)`` with the current
    :class:`flows.build.Streams` and must return a ``Streams``.
    """

    type: Literal["custom"]
    id: str
    callable: str = Field(pattern=r"^[\w.]+:[\w.]+$")
    params: dict[str, Any] = Field(default_factory=dict)


OperatorConfig = Annotated[
    ValidateOp | AggregateOp | AnomalyOp | AlarmOp | KpiOp | InferenceOp | CustomOp,
    Field(discriminator="type"),
]


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


class KafkaSinkConfig(_Model):
    """Streams to Kafka topics; points are keyed by tag path (see connectors.codec)."""

    type: Literal["kafka"]
    id: str = "kafka"
    kafka: KafkaConnection
    topics: dict[StreamName, str] = Field(
        default_factory=lambda: {  # type: ignore[arg-type,return-value]
            "raw": "edgeflow.raw",
            "aggregates": "edgeflow.aggregates",
            "events": "edgeflow.events",
            "dead_letters": "edgeflow.dead_letters",
        }
    )
    encoding: Literal["binary", "json"] = "binary"
    delivery_timeout_s: float = Field(default=30.0, gt=0)


class TimescaleSinkConfig(_Model):
    """PostgreSQL / TimescaleDB tables with upserts on the natural keys."""

    type: Literal["timescaledb"]
    id: str = "timescaledb"
    dsn: SecretStr
    db_schema: str = Field(default="edgeflow", alias="schema", pattern=r"^[A-Za-z_][\w]*$")
    streams: tuple[Literal["raw", "points", "aggregates", "events", "kpis"], ...] = (
        "aggregates",
        "events",
        "kpis",
    )
    use_timescale: bool = True
    compress_after: str | None = Field(default=None, description="e.g. '7 days'")
    retain_for: str | None = Field(default=None, description="e.g. '90 days'")
    max_buffer_rows: int = Field(default=1_000_000, gt=0)
    overflow: Literal["block", "fail"] = "block"


class InfluxSinkConfig(_Model):
    """InfluxDB line protocol over HTTP (v1 /write or v2 /api/v2/write)."""

    type: Literal["influxdb"]
    id: str = "influxdb"
    url: str = Field(pattern=r"^https?://")
    api: Literal["v1", "v2"] = "v1"
    database: str = "edgeflow"
    retention_policy: str | None = None
    username: str | None = None
    password: SecretStr | None = None
    org: str | None = None
    bucket: str | None = None
    token: SecretStr | None = None
    streams: tuple[Literal["raw", "points", "aggregates", "events", "kpis"], ...] = (
        "aggregates",
        "events",
        "kpis",
    )
    retry_timeout_s: float = Field(default=60.0, gt=0)

    @model_validator(mode="after")
    def _v2_target(self) -> InfluxSinkConfig:
        if self.api == "v2" and not (self.org and self.bucket):
            msg = "api v2 needs org and bucket"
            raise ValueError(msg)
        return self


SinkConfig = Annotated[
    ConsoleSink | FileSink | KafkaSinkConfig | TimescaleSinkConfig | InfluxSinkConfig,
    Field(discriminator="type"),
]


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


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(text: str, env: Mapping[str, str] | None = None) -> str:
    """Replace ``${VAR}`` and ``${VAR:-default}`` in a site file; unknown VAR is an error."""
    source = os.environ if env is None else env

    def repl(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        if name in source:
            return source[name]
        if default is not None:
            return default
        msg = f"site config uses ${{{name}}} but it is not set (use ${{{name}:-default}})"
        raise ConfigError(msg)

    return _ENV.sub(repl, text)


def _format_errors(source: str, err: ValidationError) -> str:
    lines = [f"invalid site config {source}:"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(root)"
        lines.append(f"  {loc}: {e['msg']}")
    return "\n".join(lines)


def parse_site(data: Any, *, source: str = "<dict>", base_dir: Path | None = None) -> SiteConfig:
    """Validate already-parsed YAML/JSON data; relative file paths resolve against base_dir."""
    try:
        return SiteConfig.model_validate(data, context={"base_dir": base_dir})
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
        data = yaml.safe_load(expand_env(text))
    except yaml.YAMLError as e:
        msg = f"site config {p} is not valid YAML: {e}"
        raise ConfigError(msg) from e
    if not isinstance(data, dict):
        msg = f"site config {p} must be a mapping at the top level"
        raise ConfigError(msg)
    return parse_site(data, source=str(p), base_dir=p.parent)


class EdgeflowSettings(BaseSettings):
    """Entry-point settings from the environment (``EDGEFLOW_*``)."""

    model_config = SettingsConfigDict(env_prefix="EDGEFLOW_", extra="ignore")

    site: Path = Field(default=DEMO_SITE, description="site file; default depends on the flow")
    out_dir: Path | None = Field(default=None, description="overrides every file sink's dir")
    log_level: str = "INFO"
