"""Registers the file input (CSV/Parquet history) and the file sink (JSON Lines per stream)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import bytewax.operators as op

from connectors.files.config import FileInput
from connectors.files.sink import JsonLinesSink
from flows.build import Build
from flows.registry import SinkModel, StreamName, register

__all__ = ["FileSinkConfig", "build", "build_input"]


class FileSinkConfig(SinkModel):
    """JSON Lines files, one per stream, under ``dir`` (``EDGEFLOW_OUT_DIR`` overrides it)."""

    type: Literal["file"]
    id: str = "file"
    dir: Path = Path("out")
    streams: tuple[StreamName, ...] = ("aggregates", "events", "late", "dead_letters")


@register("sink", "file", FileSinkConfig, sample="sample.yaml")
def build(cfg: FileSinkConfig, b: Build) -> None:
    """Append each subscribed stream's rows to ``<dir>/<stream>.jsonl``."""
    base = b.out_dir or cfg.dir
    for name in cfg.streams:
        if b.has(name):
            op.output(
                f"{cfg.id}_{name}", b.rows(name, cfg.id), JsonLinesSink(base / f"{name}.jsonl")
            )


@register("input", "file", FileInput, emits=("raw", "dead_letters"), sample="input_sample.yaml")
def build_input(cfg: FileInput, b: Build) -> None:
    """Read recorded history (CSV or Parquet) to its end."""
    from connectors.files.source import FileSource  # pyarrow: loaded only by flows that read files

    b.input(cfg.id, FileSource(cfg, (b.site.site.enterprise, b.site.site.site)))
