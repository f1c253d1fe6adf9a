"""Configuration of the TimescaleDB / PostgreSQL sink."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr

from flows.registry import SinkModel

__all__ = ["TimescaleSinkConfig"]


class TimescaleSinkConfig(SinkModel):
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
    connect_timeout_s: float = Field(default=5.0, gt=0)
    max_backoff_s: float = Field(default=10.0, gt=0)
    close_timeout_s: float = Field(default=60.0, ge=0)
