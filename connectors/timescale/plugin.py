"""Registers the TimescaleDB / PostgreSQL sink."""

from __future__ import annotations

import bytewax.operators as op

from connectors.timescale.config import TimescaleSinkConfig
from connectors.timescale.sink import TimescaleSink
from flows.build import Build
from flows.registry import register

__all__ = ["build"]


@register("sink", "timescaledb", TimescaleSinkConfig, sample="sample.yaml")
def build(cfg: TimescaleSinkConfig, b: Build) -> None:
    """Upsert the subscribed streams' rows into their tables."""
    rows = b.tagged_rows(cfg.streams, cfg.id)
    if rows is not None:
        op.output(cfg.id, op.key_on(f"{cfg.id}_key", rows, _one_key), TimescaleSink(cfg))


def _one_key(_: object) -> str:
    return "db"
