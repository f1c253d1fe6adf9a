"""Configuration of the OPC UA input."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from flows.registry import InputModel

__all__ = ["OpcUaInput", "OpcUaNodeConfig"]


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


class OpcUaInput(InputModel):
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
    timeout_s: float = Field(default=5.0, gt=0)
    max_samples: int | None = Field(default=None, gt=0, description="stop after N (tests)")

    @model_validator(mode="after")
    def _checks(self) -> OpcUaInput:
        if not self.nodes and not self.browse:
            msg = "give nodes and/or browse"
            raise ValueError(msg)
        if self.security != "None" and not (self.cert and self.key):
            msg = f"security {self.security} needs cert and key (edgeflow certs --out certs/)"
            raise ValueError(msg)
        return self
