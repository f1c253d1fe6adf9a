"""The component registry: every input, operator and sink registers itself here.

A component is one module (or folder) that holds its pydantic config model (with ``type:
Literal[...]``), its runtime and a ``build`` function, registered under its kind and type::

    @register("operator", "alarm", AlarmOp, emits=("events",), needs=("points",))
    def build(cfg: AlarmOp, b: Build) -> None:
        b.add("events", alarms(cfg.id, b.points, cfg.rules))

The site schema is assembled from what is registered (:func:`union`), and the streams a
component needs or a sink subscribes to are checked against what the components before it
emit. Built-in components are listed in :data:`BUILTINS`; other installed packages add theirs
through the ``edgeflow.components`` entry point group (each entry point names a module that
registers on import, or a callable that does). Stream kinds (``raw``, ``aggregates``, ...) are
registered once with their record type and their row mapping, so sinks need no ``isinstance``
chains. Sub-commands of the ``edgeflow`` command are registered the same way.
"""

from __future__ import annotations

import builtins
import importlib
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from flows.errors import ConfigError
from wire.records import TagRef

__all__ = [
    "BUILTINS",
    "ENTRY_POINT_GROUP",
    "Command",
    "History",
    "Component",
    "ComponentModel",
    "InputModel",
    "Kind",
    "OperatorModel",
    "SinkModel",
    "StreamKind",
    "StreamName",
    "TimeZone",
    "command",
    "commands",
    "component",
    "components",
    "load_components",
    "registry_version",
    "register",
    "register_command",
    "register_stream",
    "stream_kind",
    "stream_kinds",
    "union",
]

log = logging.getLogger(__name__)

Kind = Literal["input", "operator", "sink"]
KINDS: tuple[Kind, ...] = ("input", "operator", "sink")
ENTRY_POINT_GROUP = "edgeflow.components"

# Modules of the built-in components, imported by load_components(); each registers itself.
BUILTINS: tuple[str, ...] = (
    "flows.streams",
    "simulators.plugin",
    "connectors.kafka.plugin",
    "connectors.modbus.plugin",
    "connectors.mqtt.plugin",
    "connectors.opcua.plugin",
    "connectors.console.plugin",
    "connectors.files.plugin",
    "connectors.timescale.plugin",
    "connectors.influx.plugin",
    "operators.validate.plugin",
    "operators.aggregate.plugin",
    "operators.anomaly.plugin",
    "operators.alarm.plugin",
    "operators.kpi.plugin",
    "operators.inference.plugin",
    "operators.state.plugin",
    "operators.percentiles.plugin",
    "operators.custom.plugin",
    "reports.plugin",
)


class ComponentModel(BaseModel):
    """Base of every component config: strict (unknown keys are errors), frozen, with an id."""

    # Inputs never appear in validation errors: they may hold secrets.
    model_config = ConfigDict(
        extra="forbid", frozen=True, populate_by_name=True, hide_input_in_errors=True
    )

    type: str
    id: str = Field(default="", pattern=r"^[A-Za-z0-9_.-]+$")

    @model_validator(mode="before")
    @classmethod
    def _default_id(cls, data: Any) -> Any:
        # An entry without an id is named by its model's default id, else by its type.
        if isinstance(data, dict) and not data.get("id"):
            default = cls.model_fields["id"].default
            data = {**data, "id": default or data.get("type", "")}
        return data


@dataclass(frozen=True)
class History:
    """What an input holds for a replay: first and last point time (None: no data at all).

    ``note`` says why the start may be missing (e.g. offsets deleted by retention).
    """

    first_ms: int | None
    last_ms: int | None
    note: str = ""


class InputModel(ComponentModel):
    """Base of input configs."""

    def history(self) -> History:
        """Return the span of history this input can replay (backtests check it first)."""
        msg = f"input {self.id} ({self.type}) cannot replay history"
        raise ConfigError(msg)

    def for_replay(self, start_ms: int, end_ms: int) -> InputModel:
        """Return this input reading ``[start_ms, end_ms)`` of its history (backtests)."""
        msg = f"input {self.id} ({self.type}) cannot replay history"
        raise ConfigError(msg)

    def sampled_tags(self, enterprise: str, site: str) -> dict[TagRef, int]:
        """Return the tags this input samples at a fixed interval, with that interval in ms.

        Operators check their rules against it when the flow is built; default: none known
        (inputs that report changes or replay recordings).
        """
        del enterprise, site
        return {}


class OperatorModel(ComponentModel):
    """Base of operator configs."""

    def for_replay(self) -> OperatorModel:
        """Return this operator as it must run in a replay (pure event time); default: as is."""
        return self

    def revision_horizon_ms(self) -> int:
        """Return how long after a row's time this operator may still rewrite it; default 0.

        Sinks that freeze old data (compression) check their settings against it.
        """
        return 0


class SinkModel(ComponentModel):
    """Base of sink configs; a ``streams`` field, when a sink has one, lists its subscriptions."""


def _zone_name(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as e:
        msg = f"unknown time zone {name!r} (an IANA name such as Europe/Berlin)"
        raise ValueError(msg) from e
    return name


TimeZone = Annotated[str, AfterValidator(_zone_name)]
"""An IANA time zone name (``Europe/Berlin``), checked when the config is read."""


def _known_stream(name: str) -> str:
    load_components()
    if name not in _REG.streams:
        msg = f"unknown stream {name!r} (known: {', '.join(sorted(_REG.streams))})"
        raise ValueError(msg)
    return name


StreamName = Annotated[str, AfterValidator(_known_stream)]
"""A registered stream kind's name (sinks' ``streams`` fields use this type)."""

Emits = tuple[str, ...] | Callable[[Any], tuple[str, ...]]
M = TypeVar("M", bound=ComponentModel)
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Component:
    """A registered component: its kind, type, config model and build function."""

    kind: Kind
    type: str
    config: builtins.type[ComponentModel]
    build: Callable[[Any, Any], None]
    emits_: Emits = ()
    needs_: Emits = ()
    sample: Path | None = None
    module: str = ""

    def emits(self, cfg: Any) -> tuple[str, ...]:
        """Stream kinds this component adds, for ``cfg``."""
        return self.emits_(cfg) if callable(self.emits_) else self.emits_

    def needs(self, cfg: Any) -> tuple[str, ...]:
        """Stream kinds this component reads, for ``cfg`` (a sink: its ``streams`` by default)."""
        if callable(self.needs_):
            return self.needs_(cfg)
        if self.kind == "sink" and not self.needs_:
            return tuple(getattr(cfg, "streams", ()))
        return self.needs_

    @property
    def summary(self) -> str:
        """First line of the config model's docstring."""
        return (self.config.__doc__ or "").strip().splitlines()[0] if self.config.__doc__ else ""


@dataclass(frozen=True)
class StreamKind:
    """A named stream: the record type it carries and how a record becomes rows."""

    name: str
    record: type
    rows: Callable[[Any], list[dict[str, Any]]]
    doc: str = ""


@dataclass(frozen=True)
class Command:
    """A sub-command of the ``edgeflow`` command: ``main(argv) -> exit code``."""

    name: str
    main: Callable[[list[str]], int]
    help: str = ""


@dataclass
class _Registry:
    components: dict[tuple[str, str], Component] = field(default_factory=dict)
    streams: dict[str, StreamKind] = field(default_factory=dict)
    commands: dict[str, Command] = field(default_factory=dict)
    loaded: bool = False
    version: int = 0


_REG = _Registry()
_LOCK = threading.RLock()


def register(
    kind: Kind,
    type_: str,
    config: type[M],
    *,
    emits: Emits = (),
    needs: Emits = (),
    sample: str | Path | None = None,
) -> Callable[[F], F]:
    """Register ``build(cfg, b)`` as the component ``type_`` of ``kind``.

    ``config`` must be a :class:`ComponentModel` whose ``type`` field is ``Literal[type_]``.
    ``emits``/``needs`` are stream kinds (or a function of the config returning them).
    ``sample`` is a YAML file (relative to the registering module's folder) with a documented
    example entry; one test validates every sample.
    """
    if kind not in KINDS:
        msg = f"component kind must be one of {KINDS}, got {kind!r}"
        raise ValueError(msg)
    field_info = config.model_fields.get("type")
    if field_info is None or getattr(field_info.annotation, "__args__", None) != (type_,):
        msg = f"{config.__name__}.type must be Literal[{type_!r}]"
        raise TypeError(msg)

    def deco(build: F) -> F:
        module = importlib.import_module(build.__module__)
        here = Path(module.__file__ or ".").parent
        path = None if sample is None else here / sample
        comp = Component(kind, type_, config, build, emits, needs, path, build.__module__)
        with _LOCK:
            old = _REG.components.get((kind, type_))
            if old is not None and old.module != comp.module:
                msg = f"{kind} type {type_!r} is registered twice: {old.module}, {comp.module}"
                raise ValueError(msg)
            _REG.components[(kind, type_)] = comp
            _REG.version += 1
        return build

    return deco


def register_stream(
    name: str, record: type, rows: Callable[[Any], list[dict[str, Any]]], doc: str = ""
) -> None:
    """Register a stream kind with its record type and its row mapping."""
    with _LOCK:
        _REG.streams[name] = StreamKind(name, record, rows, doc)
        _REG.version += 1


def register_command(name: str, main: Callable[[list[str]], int], help: str = "") -> None:
    """Register ``edgeflow NAME ...``; ``main`` gets the remaining arguments."""
    with _LOCK:
        _REG.commands[name] = Command(name, main, help)


def _import(name: str, origin: str) -> None:
    try:
        importlib.import_module(name)
    except ImportError as e:
        msg = f"cannot load edgeflow components from {name} ({origin}): {e}"
        raise ConfigError(msg) from e


def load_components(*, builtins: Iterable[str] = BUILTINS) -> None:
    """Import the built-in components, then those of installed packages (once)."""
    with _LOCK:
        if _REG.loaded:
            return
        for name in builtins:
            _import(name, "built-in")
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            try:
                obj = ep.load()
            except ImportError as e:
                msg = (
                    f"cannot load edgeflow components from entry point {ep.name} ({ep.value}): {e}"
                )
                raise ConfigError(msg) from e
            if callable(obj) and not isinstance(obj, type):
                obj()
            log.debug("loaded components from %s (%s)", ep.name, ep.value)
        _REG.loaded = True


def component(kind: Kind, type_: str) -> Component:
    """Return the registered component, or raise :class:`ConfigError` listing the known types."""
    load_components()
    comp = _REG.components.get((kind, type_))
    if comp is None:
        known = ", ".join(sorted(t for k, t in _REG.components if k == kind))
        msg = f"unknown {kind} type {type_!r} (known: {known})"
        raise ConfigError(msg)
    return comp


def components(kind: Kind | None = None) -> list[Component]:
    """Every registered component (of ``kind``), sorted by kind and type."""
    load_components()
    return sorted(
        (c for c in _REG.components.values() if kind is None or c.kind == kind),
        key=lambda c: (KINDS.index(c.kind), c.type),
    )


def union(kind: Kind) -> Any:
    """Return the discriminated union of every registered config model of ``kind``."""
    models = tuple(c.config for c in components(kind))
    if not models:
        msg = f"no {kind} components are registered"
        raise ConfigError(msg)
    if len(models) == 1:
        return models[0]
    from typing import Union

    return Annotated[Union[models], Field(discriminator="type")]  # noqa: UP007


def stream_kind(name: str) -> StreamKind:
    """Return the registered stream kind ``name``."""
    load_components()
    kind = _REG.streams.get(name)
    if kind is None:
        msg = f"unknown stream {name!r} (known: {', '.join(sorted(_REG.streams))})"
        raise ConfigError(msg)
    return kind


def stream_kinds() -> list[StreamKind]:
    """Every registered stream kind."""
    load_components()
    return sorted(_REG.streams.values(), key=lambda s: s.name)


def command(name: str) -> Command | None:
    """Return the registered sub-command ``name``."""
    load_components()
    return _REG.commands.get(name)


def commands() -> list[Command]:
    """Every registered sub-command."""
    load_components()
    return sorted(_REG.commands.values(), key=lambda c: c.name)


def registry_version() -> int:
    """Return a number that changes whenever something is registered (schema caches)."""
    return _REG.version
