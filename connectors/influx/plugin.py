"""Registers the InfluxDB sink."""

from __future__ import annotations

import bytewax.operators as op

from connectors.influx.config import InfluxSinkConfig
from connectors.influx.writer import InfluxWriter
from flows.build import Build
from flows.registry import register

__all__ = ["build"]


@register("sink", "influxdb", InfluxSinkConfig, emits=("dead_letters",), sample="sample.yaml")
def build(cfg: InfluxSinkConfig, b: Build) -> None:
    """Write the subscribed streams; lines InfluxDB rejects flow on as dead letters."""
    rows = b.tagged_rows(cfg.streams, cfg.id)
    if rows is not None:
        # Writing is a step, not a terminal sink, so rejected lines flow on as dead letters.
        b.add("dead_letters", op.flat_map_batch(f"{cfg.id}_write", rows, InfluxWriter(cfg).write))
