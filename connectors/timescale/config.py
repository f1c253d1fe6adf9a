"""Configuration of the TimescaleDB / PostgreSQL sink."""

from __future__ import annotations

import re
from typing import Literal

import psycopg
from psycopg.conninfo import conninfo_to_dict
from pydantic import Field, SecretStr, field_validator

from connectors._spool_options import SpoolOptions
from flows.logs import reveal
from flows.registry import SinkModel

__all__ = ["TimescaleSinkConfig", "mask_dsn", "reveal_dsn"]


class TimescaleSinkConfig(SinkModel, SpoolOptions):
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
    connect_timeout_s: float = Field(default=5.0, gt=0)
    max_backoff_s: float = Field(default=10.0, gt=0)
    close_timeout_s: float = Field(default=60.0, ge=0)
    stall_after_s: float = Field(
        default=10.0, gt=0, description="a write without answer this long is reported as a stall"
    )
    batch_rows: int = Field(default=5000, gt=0, description="rows per transaction")

    @field_validator("dsn")
    @classmethod
    def _parsable(cls, v: SecretStr) -> SecretStr:
        dsn = v.get_secret_value()
        try:
            conninfo_to_dict(dsn)
        except psycopg.ProgrammingError as e:
            # libpq quotes the connection string, password included: never pass it on.
            why = mask_dsn(str(e).strip().splitlines()[0], dsn)
            msg = f"not a PostgreSQL connection string (URI or key=value): {why}"
            raise ValueError(msg) from None
        return v


def reveal_dsn(dsn: SecretStr) -> str:
    """Return the DSN for the client; its password is redacted from logs from now on."""
    value = reveal(dsn)
    password = conninfo_to_dict(value).get("password")
    if password:
        reveal(SecretStr(str(password)))
    return value


def mask_dsn(text: str, dsn: str) -> str:
    """Return libpq's message about ``dsn`` with every part of the DSN masked.

    libpq quotes fragments of the connection string (a password among them) in its parse
    errors: the quoted fragments, the DSN itself and anything shaped like a password go.
    """
    text = text.replace(dsn, "<dsn>")
    text = re.sub(r'"[^"]*"', '"..."', text)
    text = re.sub(r"(://[^:/@\s]*:)[^@\s]*@", r"\1***@", text)
    return re.sub(r"(password\s*=\s*)(\S+)", r"\1***", text)
