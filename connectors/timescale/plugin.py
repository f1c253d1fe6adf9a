"""Registers the TimescaleDB / PostgreSQL sink."""

from __future__ import annotations

from functools import partial

from connectors._spool_options import spool_home
from connectors._spooled import spooled_output
from connectors.timescale.config import TimescaleSinkConfig
from connectors.timescale.sink import spooled
from flows.build import Build
from flows.registry import register

__all__ = ["build"]


@register(
    "sink",
    "timescaledb",
    TimescaleSinkConfig,
    emits=("dead_letters", "events"),
    sample="sample.yaml",
)
def build(cfg: TimescaleSinkConfig, b: Build) -> None:
    """Spool the subscribed streams' rows; a writer thread upserts them into their tables."""
    rows = b.tagged_rows(cfg.streams, cfg.id)
    if rows is None:
        return
    home, path = spool_home(b.site, cfg)
    spooled_output(b, cfg.id, rows, partial(spooled, cfg, home / cfg.db_schema, path))
