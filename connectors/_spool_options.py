"""What every spooled sink's configuration has: where it spools, how much, how long at the end."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

__all__ = ["SpoolOptions", "spool_home"]


class SpoolOptions(BaseModel):
    """Spool fields shared by the Kafka, TimescaleDB and InfluxDB sinks."""

    close_timeout_s: float = Field(
        default=30.0, ge=0, description="at the end of a run, how long to deliver what is left"
    )
    spool_dir: Path | None = Field(
        default=None,
        description="default: $EDGEFLOW_SPOOL_DIR or ./spool, then <site name>/<sink id>/...",
    )
    spool_max_bytes: int = Field(default=10 * 1024**3, gt=0, description="10 GiB")
    spool_max_age_s: float = Field(default=86_400.0, gt=0, description="24 h of outage")
    spool_overflow: Literal["drop_oldest", "drop_newest"] = "drop_oldest"


def spool_home(site: Any, cfg: Any) -> tuple[Path, str]:
    """Return a sink's spool root (``<dir>/<site name>/<sink id>``) and its event path."""
    base = cfg.spool_dir or Path(os.environ.get("EDGEFLOW_SPOOL_DIR", "spool"))
    ident = site.site
    return base / site.name / cfg.id, f"{ident.enterprise}/{ident.site}/{cfg.id}"
