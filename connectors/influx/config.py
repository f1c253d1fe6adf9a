"""Configuration of the InfluxDB sink."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, model_validator

from connectors._spool_options import SpoolOptions
from flows.registry import SinkModel

__all__ = ["InfluxSinkConfig"]


class InfluxSinkConfig(SinkModel, SpoolOptions):
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
    timeout_s: float = Field(default=10.0, gt=0)
    retry_timeout_s: float = Field(
        default=10.0, gt=0, description="retry one request this long before backing off"
    )
    max_lines: int = Field(default=5000, gt=0)

    @model_validator(mode="after")
    def _v2_target(self) -> InfluxSinkConfig:
        if self.api == "v2" and not (self.org and self.bucket):
            msg = "api v2 needs org and bucket"
            raise ValueError(msg)
        return self
