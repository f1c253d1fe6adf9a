"""Configuration of the MQTT input (plain topics and Sparkplug B)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from connectors.errors import SourceConfigError
from flows.registry import InputModel

__all__ = ["FIELDS", "MqttConnection", "MqttInput", "TopicTemplate"]

FIELDS = ("enterprise", "site", "area", "line", "machine", "tag")


@dataclass(frozen=True)
class TopicTemplate:
    """Map topic levels to ISA-95 fields; ``{name}`` levels are variables.

    ``plant/{area}/{line}/{machine}/{tag}`` subscribes to ``plant/+/+/+/+``; ``enterprise``
    and ``site`` default to the site's.
    """

    __pydantic_config__ = ConfigDict(extra="forbid")

    template: str
    payload: Literal["json", "number"] = "json"
    unit: str = ""

    def __post_init__(self) -> None:
        names = re.findall(r"\{(\w+)\}", self.template)
        bad = [n for n in names if n not in FIELDS]
        if bad or "tag" not in names:
            msg = (
                f"topic template {self.template!r} must contain {{tag}} and may use "
                f"{', '.join('{' + f + '}' for f in FIELDS)}; unknown: {bad}"
            )
            raise SourceConfigError(msg)
        if "+" in self.template or "#" in self.template:
            msg = f"topic template {self.template!r}: use {{field}} levels, not MQTT wildcards"
            raise SourceConfigError(msg)

    @property
    def subscription(self) -> str:
        """The MQTT subscription filter."""
        return re.sub(r"\{\w+\}", "+", self.template)

    def match(self, topic: str) -> dict[str, str] | None:
        """Return the fields of a topic, or None if it does not fit the template."""
        t_parts, p_parts = self.template.split("/"), topic.split("/")
        if len(t_parts) != len(p_parts):
            return None
        out: dict[str, str] = {}
        for t, p in zip(t_parts, p_parts, strict=True):
            m = re.fullmatch(r"\{(\w+)\}", t)
            if m:
                if not p:
                    return None
                out[m.group(1)] = p
            elif t != p:
                return None
        return out


class MqttConnection(BaseModel):
    """Where the broker is and how to log in: shared by the MQTT input and output."""

    host: str
    port: int = Field(default=1883, gt=0, le=65535)
    username: str | None = None
    password: SecretStr | None = None
    tls_ca: str | None = None

    @field_validator("tls_ca")
    @classmethod
    def _readable(cls, v: str | None) -> str | None:
        if v is not None and not Path(v).is_file():
            msg = f"CA certificate file {v} does not exist or is not a file"
            raise ValueError(msg)
        return v


class MqttInput(InputModel, MqttConnection):
    """MQTT subscriptions: plain topic templates and/or Sparkplug B groups."""

    type: Literal["mqtt"]
    id: str = "mqtt"
    client_id: str = "edgeflow"
    qos: Literal[0, 1] = 1
    topics: tuple[TopicTemplate, ...] = ()
    sparkplug_groups: tuple[str, ...] = ()
    queue_size: int = Field(default=100_000, gt=0)
    overflow: Literal["block", "drop_oldest", "drop_newest"] = "block"
    batch_size: int = Field(default=10_000, gt=0)
    rebirth_min_interval_ms: int = Field(default=10_000, ge=0)
    connect_timeout_s: float = Field(default=10.0, gt=0)
    text_tags: str | None = Field(
        default=None, description="glob of tags whose string values are text points"
    )
    reconnect_max_s: float = Field(default=2.0, gt=0, description="longest reconnect backoff")
    sparkplug_host_id: str | None = Field(
        default=None,
        pattern=r"^[^/+#\s]+$",
        description="act as Sparkplug primary host: publish spBv1.0/STATE/<id>",
    )
    max_messages: int | None = Field(default=None, gt=0, description="stop after N (tests)")
    spool_dir: Path | None = Field(
        default=None,
        description=(
            "where messages wait between acknowledgement and processing; default: "
            "$EDGEFLOW_SPOOL_DIR or ./spool, then <site name>/<input id>/<client id>"
        ),
    )

    @model_validator(mode="after")
    def _something(self) -> MqttInput:
        if not self.topics and not self.sparkplug_groups:
            msg = "give topics and/or sparkplug_groups"
            raise ValueError(msg)
        return self
