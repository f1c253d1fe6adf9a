"""Registers the ``backtest_report`` sink (``edgeflow backtest`` adds it to the site)."""

from __future__ import annotations

from typing import Any

import bytewax.operators as op

from flows.build import Build
from flows.registry import register
from reports.backtest import BacktestReportConfig, ReportSink

__all__ = ["build"]

_RESULTS = ("aggregates", "kpis", "events", "late", "dead_letters")


def _tagged(name: str) -> Any:
    return lambda item: (name, item)


@register("sink", "backtest_report", BacktestReportConfig, sample="sample.yaml")
def build(cfg: BacktestReportConfig, b: Build) -> None:
    """Merge the raw points (progress) and the result rows into one report step."""
    parts = []
    if b.has("raw"):
        parts.append(op.map(f"{cfg.id}_raw", b.stream("raw", cfg.id), _tagged("raw")))
    for name in _RESULTS:
        if b.has(name):
            parts.append(op.map(f"{cfg.id}_{name}", b.rows(name, cfg.id), _tagged(name)))
    if parts:
        op.output(cfg.id, op.merge(f"{cfg.id}_all", *parts), ReportSink(cfg, b.site.name))
