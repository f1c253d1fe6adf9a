"""Registers the InfluxDB sink."""

from __future__ import annotations

from functools import partial

from connectors._spool_options import spool_home
from connectors._spooled import spooled_output
from connectors.influx.config import InfluxSinkConfig
from connectors.influx.sink import spooled
from flows.build import Build
from flows.registry import register

__all__ = ["build"]


@register(
    "sink",
    "influxdb",
    InfluxSinkConfig,
    emits=("dead_letters", "events"),
    sample="sample.yaml",
)
def build(cfg: InfluxSinkConfig, b: Build) -> None:
    """Spool the subscribed streams; a thread writes them (rejected lines: dead letters)."""
    rows = b.tagged_rows(cfg.streams, cfg.id)
    if rows is None:
        return
    home, path = spool_home(b.site, cfg)
    spooled_output(b, cfg.id, rows, partial(spooled, cfg, home / cfg.database, path))
