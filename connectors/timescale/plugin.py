"""Registers the TimescaleDB / PostgreSQL sink."""

from __future__ import annotations

import os
from pathlib import Path

import bytewax.operators as op

from connectors.timescale.config import TimescaleSinkConfig
from connectors.timescale.sink import TimescaleSink
from flows.build import Build
from flows.registry import register

__all__ = ["build"]


@register("sink", "timescaledb", TimescaleSinkConfig, sample="sample.yaml")
def build(cfg: TimescaleSinkConfig, b: Build) -> None:
    """Spool the subscribed streams' rows; a writer thread upserts them into their tables."""
    rows = b.tagged_rows(cfg.streams, cfg.id)
    if rows is None:
        return
    base = cfg.spool_dir or Path(os.environ.get("EDGEFLOW_SPOOL_DIR", "spool"))
    ident = b.site.site
    sink = TimescaleSink(
        cfg, base / b.site.name / cfg.id, f"{ident.enterprise}/{ident.site}/{cfg.id}"
    )
    op.output(cfg.id, op.key_on(f"{cfg.id}_key", rows, _one_key), sink)


def _one_key(_: object) -> str:
    return "db"
