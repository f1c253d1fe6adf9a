"""Configuration of the TimescaleDB / PostgreSQL sink."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from connectors._spool_options import SpoolOptions
from connectors.timescale.policies import Policy, interval_ms
from flows.logs import reveal
from flows.registry import SinkModel

__all__ = ["TableName", "TableSettings", "TimescaleSinkConfig", "mask_dsn", "reveal_dsn"]

TableName = Literal["points", "aggregates", "events", "kpis", "text_points"]

#: Defaults suited to each table: points arrive densest, events and KPIs sparsest.
_CHUNK = {
    "points": "1 day",
    "aggregates": "7 days",
    "events": "30 days",
    "kpis": "30 days",
    "text_points": "7 days",
}
_SEGMENTBY = {
    "points": ("path",),
    "aggregates": ("path", "window_ms"),
    "events": ("kind", "rule"),
    "kpis": ("path", "name"),
    "text_points": ("path",),
}
_ORDERBY = {
    "points": "ts desc",
    "aggregates": "start_ts desc",
    "events": "ts desc",
    "kpis": "start_ts desc",
    "text_points": "ts desc",
}


def _interval(v: str | None) -> str | None:
    if v is not None:
        interval_ms(v)
    return v


class TableSettings(BaseModel):
    """Hypertable settings of one table; what is left out takes the table's default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    chunk_interval: str | None = Field(default=None, description="e.g. '1 day'")
    compress_after: str | None = Field(
        default=None, description="every table's compression age unless its own says otherwise"
    )
    retain_for: str | None = Field(
        default=None, description="every table's retention unless its own says otherwise"
    )
    tables: dict[TableName, TableSettings] = Field(default_factory=dict)
    segmentby: tuple[str, ...] | None = None
    orderby: str | None = Field(default=None, pattern=r"^[\w, ]+$")

    _intervals = field_validator("chunk_interval", "compress_after", "retain_for")(
        classmethod(lambda cls, v: _interval(v))
    )


@dataclass(frozen=True, slots=True)
class Resolved:
    """A table's effective settings (the table's, else the sink's, else the defaults)."""

    table: str
    chunk_interval: str
    compress_after: str | None
    retain_for: str | None
    segmentby: tuple[str, ...]
    orderby: str


class TimescaleSinkConfig(SinkModel, SpoolOptions):
    """PostgreSQL / TimescaleDB tables with upserts on the natural keys."""

    type: Literal["timescaledb"]
    id: str = "timescaledb"
    dsn: SecretStr
    db_schema: str = Field(default="edgeflow", alias="schema", pattern=r"^[A-Za-z_][\w]*$")
    streams: tuple[Literal["raw", "points", "aggregates", "events", "kpis", "texts"], ...] = (
        "aggregates",
        "events",
        "kpis",
    )
    use_timescale: bool = True
    compress_after: str | None = Field(
        default=None, description="every table's compression age unless its own says otherwise"
    )
    retain_for: str | None = Field(
        default=None, description="every table's retention unless its own says otherwise"
    )
    tables: dict[TableName, TableSettings] = Field(default_factory=dict)
    connect_timeout_s: float = Field(default=5.0, gt=0)
    max_backoff_s: float = Field(default=10.0, gt=0)
    close_timeout_s: float = Field(default=60.0, ge=0)
    stall_after_s: float = Field(
        default=10.0, gt=0, description="a write without answer this long is reported as a stall"
    )
    batch_rows: int = Field(default=5000, gt=0, description="rows per transaction")

    _intervals = field_validator("compress_after", "retain_for")(
        classmethod(lambda cls, v: _interval(v))
    )

    def table(self, name: str) -> Resolved:
        """Return the effective settings of table ``name``."""
        own = self.tables.get(name, TableSettings())  # type: ignore[call-overload]
        fields = own.model_fields_set
        return Resolved(
            table=name,
            chunk_interval=own.chunk_interval or _CHUNK[name],
            compress_after=own.compress_after
            if "compress_after" in fields
            else self.compress_after,
            retain_for=own.retain_for if "retain_for" in fields else self.retain_for,
            segmentby=own.segmentby if own.segmentby is not None else _SEGMENTBY[name],
            orderby=own.orderby or _ORDERBY[name],
        )

    def policies(self) -> list[Policy]:
        """Return what every table's policies must be (its own settings first)."""
        return [Policy(r.table, r.compress_after, r.retain_for) for r in map(self.table, _CHUNK)]

    @field_validator("dsn")
    @classmethod
    def _parsable(cls, v: SecretStr) -> SecretStr:
        import psycopg  # psycopg only where a PostgreSQL sink is configured (18 MB resident)
        from psycopg.conninfo import conninfo_to_dict

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
    from psycopg.conninfo import conninfo_to_dict

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
