"""Configuration of the OPC UA input: nodes, browse rules, timestamps, security, recovery."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from connectors.errors import SourceConfigError
from flows.registry import InputModel
from wire.records import Isa95, TagRef

__all__ = ["DEFAULT_PATHS", "BrowseRule", "OpcUaInput", "OpcUaNodeConfig", "PathPattern"]

# Tried in order: the demo layout (folders for area and line, an object per machine), a device
# object with its variables under it (nested components joined with '.'), then variables
# directly under the root (the machine is the root itself).
DEFAULT_PATHS = ("{area}/{line}/{machine}/{tag}", "{machine}/{tag+}", "{tag+}")
_LEVELS = ("area", "line", "machine")
_TOKEN = re.compile(r"^(\{(area|line|machine|tag)\}|\{tag\+\}|\*\*?|[^{}*]+)$")


class OpcUaNodeConfig(BaseModel):
    """An explicitly mapped OPC UA variable: node id -> ISA-95 place, tag, unit, scaling."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    node_id: str
    area: str = Field(min_length=1, pattern=r"^[^/\s]+$")
    line: str = Field(min_length=1, pattern=r"^[^/\s]+$")
    machine: str = Field(min_length=1, pattern=r"^[^/\s]+$")
    tag: str = Field(min_length=1, pattern=r"^[^/]+$")
    unit: str = ""
    scale: float = 1.0
    offset: float = 0.0


@dataclass(frozen=True)
class PathPattern:
    """A browse-path pattern: ``/``-separated tokens matched against a variable's path.

    ``{area}``, ``{line}``, ``{machine}``, ``{tag}`` take one level; ``{tag+}`` takes one or
    more (joined with ``.``); ``*`` skips one level, ``**`` any number; other tokens must equal
    the browse name. Browse names are sanitised first (``/`` and whitespace become ``_``).
    """

    text: str

    def __post_init__(self) -> None:
        tokens = self.text.split("/")
        bad = [t for t in tokens if not _TOKEN.match(t)]
        if bad:
            msg = f"browse pattern {self.text!r}: bad tokens {bad}"
            raise SourceConfigError(msg)
        if not any(t in ("{tag}", "{tag+}") for t in tokens):
            msg = f"browse pattern {self.text!r} must contain {{tag}} or {{tag+}}"
            raise SourceConfigError(msg)

    def match(self, names: list[str]) -> dict[str, str] | None:
        """Return the captured levels of a path (a list of browse names), or None."""
        return _match(self.text.split("/"), names, {})


def _match(tokens: list[str], names: list[str], got: dict[str, str]) -> dict[str, str] | None:
    if not tokens:
        return got if not names else None
    t, rest = tokens[0], tokens[1:]
    if t == "**":
        for k in range(len(names) + 1):
            found = _match(rest, names[k:], got)
            if found is not None:
                return found
        return None
    if t == "{tag+}":
        for k in range(len(names), 0, -1):
            found = _match(rest, names[k:], {**got, "tag": ".".join(names[:k])})
            if found is not None:
                return found
        return None
    if not names:
        return None
    if t == "*":
        return _match(rest, names[1:], got)
    if t.startswith("{"):
        return _match(rest, names[1:], {**got, t[1:-1]: names[0]})
    return _match(rest, names[1:], got) if t == names[0] else None


@dataclass(frozen=True)
class BrowseRule:
    """Variables under ``root``, mapped to ISA-95 places and tag names by ``paths``.

    The first pattern a variable's browse path (relative to the root) matches wins. Levels a
    pattern does not capture come from ``area``, ``line`` and ``machine`` (default: the root's
    browse name). A variable no pattern matches becomes one dead letter, never a crash.
    """

    __pydantic_config__ = ConfigDict(extra="forbid")

    root: str
    paths: tuple[PathPattern, ...] = tuple(PathPattern(p) for p in DEFAULT_PATHS)
    area: str = "opcua"
    line: str = "default"
    machine: str | None = None
    max_depth: int = 10

    def __post_init__(self) -> None:
        for level in ("area", "line", "machine"):
            v = getattr(self, level)
            if v is not None and (not v or "/" in v or v != v.strip()):
                msg = f"browse rule {self.root}: {level} {v!r} must be a name without '/'"
                raise SourceConfigError(msg)


def _browse_entry(v: Any) -> Any:
    if isinstance(v, str):
        return {"root": v}
    if isinstance(v, dict) and isinstance(v.get("paths"), list):
        return {
            **v,
            "paths": [p if isinstance(p, PathPattern) else {"text": p} for p in v["paths"]],
        }
    return v


class OpcUaInput(InputModel):
    """OPC UA subscription or polling; nodes mapped explicitly and/or browsed from folders."""

    type: Literal["opcua"]
    id: str = "opcua"
    url: str = Field(pattern=r"^opc\.tcp://")
    mode: Literal["subscription", "polling"] = "subscription"
    interval_ms: int = Field(default=1000, gt=0)
    sampling_interval_ms: float = Field(default=500.0, ge=0)
    queue_size: int = Field(default=10, ge=0, description="server-side queue per monitored item")
    deadband: float = Field(default=0.0, ge=0)
    timestamps: Literal["source", "server", "receive"] = Field(
        default="source", description="which time a sample is stamped with (see the README)"
    )
    nodes: tuple[OpcUaNodeConfig, ...] = ()
    browse: tuple[BrowseRule, ...] = Field(
        default=(), description="browse rules (or just root node ids with the default patterns)"
    )
    security: Literal["None", "Sign", "SignAndEncrypt"] = "None"
    cert: str | None = None
    key: str | None = None
    application_uri: str = "urn:edgeflow:client"
    username: str | None = None
    password: SecretStr | None = None
    timeout_s: float = Field(default=5.0, gt=0)
    reconnect_max_s: float = Field(default=2.0, gt=0, description="longest reconnect backoff")
    rejected_retry_s: float = Field(
        default=30.0, gt=0, description="retry period after the server rejected us (cert/user)"
    )
    buffer_size: int = Field(default=200_000, gt=0, description="samples waiting for the flow")
    overflow: Literal["block", "drop_oldest", "drop_newest"] = "drop_oldest"
    max_samples: int | None = Field(default=None, gt=0, description="stop after N (tests)")

    def sampled_tags(self, enterprise: str, site: str) -> dict[TagRef, int]:
        """In polling mode, the explicitly mapped nodes' tags (read every ``interval_ms``).

        Subscriptions report changes, and browsed tags are known only once connected.
        """
        if self.mode != "polling":
            return {}
        return {
            TagRef.of(Isa95(enterprise, site, n.area, n.line, n.machine), n.tag, n.unit): (
                self.interval_ms
            )
            for n in self.nodes
        }

    @field_validator("browse", mode="before")
    @classmethod
    def _plain_roots(cls, v: Any) -> Any:
        return [_browse_entry(x) for x in v] if isinstance(v, list | tuple) else v

    @model_validator(mode="after")
    def _checks(self) -> OpcUaInput:
        if not self.nodes and not self.browse:
            msg = "give nodes and/or browse"
            raise ValueError(msg)
        if self.security != "None" and not (self.cert and self.key):
            msg = f"security {self.security} needs cert and key (edgeflow certs --out certs/)"
            raise ValueError(msg)
        return self
