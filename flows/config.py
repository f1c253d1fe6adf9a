"""Site configuration: one YAML file validated by pydantic, its schema assembled from the registry.

A site file declares the site identity, its inputs, the operator chain (in order) and the
sinks. Each entry's ``type`` selects a registered component (see :mod:`flows.registry`) whose
own model validates the entry. :func:`load_site` returns the site model or raises
:class:`ConfigError` naming the file and every bad field by its path
(``operators.1.window_ms``). Streams are checked at load time: an operator's needs must be
emitted before it, and every stream a sink subscribes to must be emitted by the site.

``${VAR}`` and ``${VAR:-default}`` are expanded in the parsed values (never in the YAML text),
so an expanded value is never re-parsed: ``pa ss #x``, ``0123`` and ``yes`` stay strings, and
a ``${...}`` in a comment is ignored.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from flows.errors import ConfigError
from flows.registry import (
    ComponentModel,
    TimeZone,
    component,
    registry_version,
    stream_kind,
    union,
)

__all__ = [
    "BASE_STREAMS",
    "DEMO_SITE",
    "LOG_LEVELS",
    "EdgeflowSettings",
    "Observability",
    "SiteBase",
    "SiteIdentity",
    "expand_env",
    "load_settings",
    "load_site",
    "parse_site",
    "site_model",
]

DEMO_SITE = Path(__file__).parent / "sites" / "demo.yaml"

# Streams every flow has: what the inputs produce (``raw``; ``points`` once keyed by shard),
# their rejects and their events (connection state, Sparkplug deaths, ...).
BASE_STREAMS = ("raw", "points", "dead_letters", "events")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, populate_by_name=True, hide_input_in_errors=True
    )


class SiteIdentity(_Model):
    """Who the site is: the first two ISA-95 levels of every tag it produces, and its zone.

    ``timezone`` (an IANA name) aligns windows that are whole days to local midnight;
    ``latitude`` / ``longitude`` place it for rules gated on the sun.
    ``shard`` is the ISA-95 level whose prefix keys operator state and watermarks: ``site``
    (default), or ``area``/``line``/``machine`` to spread one big site over workers.
    """

    enterprise: str = Field(min_length=1, pattern=r"^[^/\s]+$")
    site: str = Field(min_length=1, pattern=r"^[^/\s]+$")
    timezone: TimeZone = "UTC"
    shard: Literal["site", "area", "line", "machine"] = "site"
    latitude: float | None = Field(default=None, ge=-90, le=90, description="degrees north")
    longitude: float | None = Field(default=None, ge=-180, le=180, description="degrees east")

    @property
    def zone(self) -> ZoneInfo:
        """The site's time zone."""
        return ZoneInfo(self.timezone)

    @property
    def place(self) -> tuple[float, float] | None:
        """``(latitude, longitude)`` when both are set."""
        if self.latitude is None or self.longitude is None:
            return None
        return self.latitude, self.longitude

    @property
    def shard_levels(self) -> int:
        """How many leading path levels make a shard key."""
        return ("enterprise", "site", "area", "line", "machine").index(self.shard) + 1


class Observability(_Model):
    """The metrics and health endpoint: off unless ``listen`` is set."""

    listen: str | None = Field(
        default=None,
        pattern=r"^[^:\s]+:\d{1,5}$",
        description="host:port of the /metrics and /health endpoint, e.g. 127.0.0.1:9464",
    )
    status_interval_s: float = Field(
        default=60.0, ge=0, description="one-line status summary at INFO every N s (0: off)"
    )
    log_format: Literal["text", "json"] = "text"


class SiteBase(_Model):
    """Root of a site file; ``inputs``, ``operators`` and ``sinks`` come from the registry."""

    name: str = Field(min_length=1)
    site: SiteIdentity
    observability: Observability = Observability()
    _source_file: str | None = PrivateAttr(default=None)

    @property
    def source_file(self) -> str | None:
        """The file the site was loaded from (for error messages)."""
        return self._source_file

    def emitted_streams(self) -> set[str]:
        """Every stream some component of this site emits."""
        out = set(BASE_STREAMS)
        for kind, items in (
            ("input", getattr(self, "inputs", ())),
            ("operator", getattr(self, "operators", ())),
            ("sink", getattr(self, "sinks", ())),
        ):
            for item in items:
                out.update(component(kind, item.type).emits(item))  # type: ignore[arg-type]
        return out

    def revision_horizon_ms(self) -> int:
        """How long after a row's time some operator of this site may still rewrite it."""
        return max((o.revision_horizon_ms() for o in getattr(self, "operators", ())), default=0)

    def streams_check(self) -> list[tuple[str, str]]:
        """Return ``(field, problem)`` for needs and subscriptions no component emits."""
        problems: list[tuple[str, str]] = []
        available: set[str] = set(BASE_STREAMS)
        for inp in getattr(self, "inputs", ()):
            available.update(component("input", inp.type).emits(inp))
        for i, op in enumerate(getattr(self, "operators", ())):
            comp = component("operator", op.type)
            for need in comp.needs(op):
                if need not in available:
                    problems.append(
                        (
                            f"operators.{i}",
                            f"{op.type} {op.id!r} needs the {need!r} stream, which no input "
                            f"or earlier operator emits{_emitted_by(need)}",
                        )
                    )
            available.update(comp.emits(op))
        sinks = list(enumerate(getattr(self, "sinks", ())))
        for _i, sink in sinks:
            available.update(component("sink", sink.type).emits(sink))
        for i, sink in sinks:
            # A sink's default subscriptions take what the site has; explicit ones must exist.
            explicit = bool(sink.model_fields_set & {"streams", "topics"})
            for name in component("sink", sink.type).needs(sink):
                try:
                    stream_kind(name)
                except ConfigError as e:
                    problems.append((f"sinks.{i}.streams", e.message))
                    continue
                if name not in available and explicit:
                    problems.append(
                        (
                            f"sinks.{i}.streams",
                            f"{sink.type} {sink.id!r} subscribes to {name!r}, which no "
                            f"component of this site emits{_emitted_by(name)}",
                        )
                    )
        return problems

    @model_validator(mode="after")
    def _streams(self) -> SiteBase:
        problems = self.streams_check()
        if problems:
            raise ValueError("; ".join(f"{f}: {p}" for f, p in problems))
        return self


def _emitted_by(stream: str) -> str:
    from flows.registry import components

    who = sorted({f"{c.kind} {c.type}" for c in components() if stream in _static(c.emits_)})
    return f" (emitted by: {', '.join(who)})" if who else ""


def _static(emits: Any) -> tuple[str, ...]:
    return emits if isinstance(emits, tuple) else ()


def _unique_ids(items: tuple[ComponentModel, ...]) -> tuple[ComponentModel, ...]:
    ids = [i.id for i in items]
    dups = sorted({i for i in ids if ids.count(i) > 1})
    if dups:
        msg = f"ids must be unique; repeated: {', '.join(dups)}"
        raise ValueError(msg)
    return items


_MODEL_CACHE: dict[int, type[SiteBase]] = {}


def site_model() -> type[SiteBase]:
    """Return the site model with the discriminated unions of the registered components."""
    # Loading components may register more, so take the version after building the unions.
    input_u, operator_u, sink_u = union("input"), union("operator"), union("sink")
    version = registry_version()
    model = _MODEL_CACHE.get(version)
    if model is None:
        validators: dict[str, Any] = {
            "unique_ids": field_validator("inputs", "operators", "sinks")(
                classmethod(lambda cls, v: _unique_ids(v))
            )
        }
        model = create_model(  # type: ignore[call-overload]
            "SiteConfig",
            __base__=SiteBase,
            __validators__=validators,
            inputs=(tuple[input_u, ...], Field(min_length=1)),  # type: ignore[valid-type]
            operators=(tuple[operator_u, ...], ()),  # type: ignore[valid-type]
            sinks=(tuple[sink_u, ...], Field(min_length=1)),  # type: ignore[valid-type]
        )
        _MODEL_CACHE.clear()
        _MODEL_CACHE[version] = model
    return model


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(value: Any, env: Mapping[str, str] | None = None, *, where: str = "") -> Any:
    """Expand ``${VAR}`` / ``${VAR:-default}`` in every string of a parsed document.

    The result of an expansion is a string and stays one: it is never parsed again. An unset
    variable without a default is a :class:`ConfigError` naming the field.
    """
    source = os.environ if env is None else env
    if isinstance(value, str):

        def repl(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in source:
                return source[name]
            if default is not None:
                return default
            msg = f"uses ${{{name}}} but it is not set (use ${{{name}:-default}})"
            raise ConfigError(msg, field=where or None)

        return _ENV.sub(repl, value)
    if isinstance(value, dict):
        return {
            k: expand_env(v, source, where=f"{where}.{k}" if where else str(k))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [
            expand_env(v, source, where=f"{where}.{i}" if where else str(i))
            for i, v in enumerate(value)
        ]
    return value


def _format_errors(source: str, err: ValidationError) -> str:
    lines = [f"invalid site config {source}:"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        msg = e["msg"]
        if not loc:  # the stream check: "field: problem; field: problem"
            lines += [f"  {part}" for part in msg.removeprefix("Value error, ").split("; ")]
            continue
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


def parse_site(data: Any, *, source: str = "<dict>", base_dir: Path | None = None) -> Any:
    """Validate already-parsed YAML/JSON data; relative file paths resolve against base_dir."""
    model = site_model()
    try:
        site = model.model_validate(data, context={"base_dir": base_dir, "file": source})
    except ValidationError as e:
        # Not chained: the validation error holds the raw input, secrets included.
        raise ConfigError(_format_errors(source, e)) from None
    site._source_file = source
    return site


def load_site(path: str | Path, env: Mapping[str, str] | None = None) -> Any:
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
    try:
        data = expand_env(data, env)
    except ConfigError as e:
        raise e.at(file=str(p)) from None
    return parse_site(data, source=str(p), base_dir=p.parent)


class EdgeflowSettings(BaseSettings):
    """Entry-point settings from the environment (``EDGEFLOW_*``)."""

    model_config = SettingsConfigDict(env_prefix="EDGEFLOW_", extra="ignore")

    site: Path = Field(default=DEMO_SITE, description="site file; default depends on the flow")
    out_dir: Path | None = Field(default=None, description="overrides every file sink's dir")
    log_level: str = "INFO"
    log_format: Literal["text", "json"] | None = None
    metrics_listen: str | None = Field(
        default=None,
        pattern=r"^(off|[^:\s]+:\d{1,5})$",
        description="overrides the site's observability.listen (host:port, or off)",
    )

    @field_validator("log_level")
    @classmethod
    def _level(cls, v: str) -> str:
        level = v.strip().upper()
        if level not in LOG_LEVELS:
            msg = f"{v!r} is not a log level (one of {', '.join(LOG_LEVELS)})"
            raise ValueError(msg)
        return level


def load_settings() -> EdgeflowSettings:
    """Read the ``EDGEFLOW_*`` settings; a bad value is a :class:`ConfigError` naming it."""
    try:
        return EdgeflowSettings()
    except ValidationError as e:
        first = e.errors()[0]
        name = "EDGEFLOW_" + str(first["loc"][0]).upper() if first["loc"] else "EDGEFLOW_*"
        raise ConfigError(first["msg"].removeprefix("Value error, "), field=name) from None
