"""Registers the console sink."""

from __future__ import annotations

from typing import Literal

import bytewax.operators as op
from pydantic import Field

from connectors.console.sink import ConsoleSink
from flows.build import Build
from flows.registry import SinkModel, StreamName, register

__all__ = ["ConsoleSinkConfig", "build"]


class ConsoleSinkConfig(SinkModel):
    """Human-readable progress on stdout."""

    type: Literal["console"]
    id: str = "console"
    streams: tuple[StreamName, ...] = ("aggregates", "events", "late", "dead_letters")
    max_rows_per_window: int = Field(default=6, ge=0)


@register("sink", "console", ConsoleSinkConfig, sample="sample.yaml")
def build(cfg: ConsoleSinkConfig, b: Build) -> None:
    """Print the subscribed streams."""
    tagged = b.tagged(cfg.streams, cfg.id)
    if tagged is not None:
        op.output(cfg.id, tagged, ConsoleSink(max_rows=cfg.max_rows_per_window))
