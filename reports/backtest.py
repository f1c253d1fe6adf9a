"""The backtest report sink: progress while a replay runs, then ``report.json`` and ``.html``.

It takes the input points (for progress: data hours done, points/s, ETA) and the result
streams (into a :class:`~reports.collector.Collector`, bounded memory). When the flow ends it
writes ``DIR/report.json`` (counts, raised events, KPIs, energy, digests, plotted series) and
``DIR/report.html``; with ``compare`` (an earlier ``report.json``) both also say what changed.
One worker: backtests run in one process (``run_main``).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Literal

from bytewax.outputs import DynamicSink, StatelessSinkPartition
from pydantic import Field
from tqdm import tqdm
from typing_extensions import override

from flows.registry import SinkModel
from reports.collector import Collector
from wire.records import PointBatch, ms_to_iso, window_label

__all__ = ["BacktestReportConfig", "ReportSink", "compare_reports"]

_HOUR_MS = 3_600_000


class BacktestReportConfig(SinkModel):
    """Progress bar plus the backtest report (added by ``edgeflow backtest``)."""

    type: Literal["backtest_report"]
    id: str = "backtest_report"
    dir: Path
    from_ms: int | None = None
    to_ms: int | None = None
    plot: tuple[str, ...] = Field(default=(), description="tag globs to plot (default: busiest)")
    compare: Path | None = None
    progress: bool = True


def _iso(ms: int | None) -> str:
    return "" if ms is None else ms_to_iso(ms)


def _delta(now: dict[str, Any], before: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        k: {"before": before.get(k), "now": now.get(k)}
        for k in sorted(set(now) | set(before))
        if now.get(k) != before.get(k)
    }


def compare_reports(now: dict[str, Any], before: dict[str, Any], against: str) -> dict[str, Any]:
    """Return what changed from ``before`` to ``now``: events gained and lost, counts, KPIs."""
    b_raised = {tuple(r) for r in before.get("raised", [])}
    n_raised = {tuple(r) for r in now.get("raised", [])}
    b_digests, n_digests = before.get("digests", {}), now.get("digests", {})
    return {
        "against": against,
        "same_aggregates": b_digests.get("aggregates") == n_digests.get("aggregates"),
        "same": {k: b_digests.get(k) == v for k, v in n_digests.items()},
        "raised_only_now": sorted(list(r) for r in n_raised - b_raised),
        "raised_only_before": sorted(list(r) for r in b_raised - n_raised),
        "events": _delta(now.get("events", {}), before.get("events", {})),
        "kpis": _delta(
            {k: v["mean"] for k, v in now.get("kpis", {}).items()},
            {k: v["mean"] for k, v in before.get("kpis", {}).items()},
        ),
    }


class _Progress:
    """Data time done over the requested range, with points/s; quiet when not wanted."""

    def __init__(self, cfg: BacktestReportConfig) -> None:
        self.cfg = cfg
        self.bar: tqdm[Any] | None = None
        self.points = 0
        self.started = time.monotonic()

    def update(self, n: int, last_ms: int, first_ms: int) -> None:
        self.points += n
        if not self.cfg.progress:
            return
        if self.bar is None:
            start = self.cfg.from_ms if self.cfg.from_ms is not None else first_ms
            self.start_ms = start
            total = None
            if self.cfg.to_ms is not None:
                total = round((self.cfg.to_ms - start) / _HOUR_MS, 2)
            self.bar = tqdm(
                total=total,
                unit="h",
                desc="backtest (data hours)",
                file=sys.stderr,
                dynamic_ncols=True,
                mininterval=0.5,
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f} h "
                "[{elapsed}<{remaining}{postfix}]",
            )
        done = round(max(0, last_ms - self.start_ms) / _HOUR_MS, 2)
        if done > self.bar.n:
            self.bar.n = min(done, self.bar.total or done)
        rate = self.points / max(1e-9, time.monotonic() - self.started)
        self.bar.set_postfix_str(f"{self.points:,} points, {rate:,.0f} points/s", refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class _Partition(StatelessSinkPartition[tuple[str, Any]]):
    def __init__(self, cfg: BacktestReportConfig, site: str) -> None:
        self.cfg, self.site = cfg, site
        self.collector = Collector(cfg.dir / "report.sqlite", plot=cfg.plot)
        self.progress = _Progress(cfg)

    @override
    def write_batch(self, items: list[tuple[str, Any]]) -> None:
        by_stream: dict[str, list[dict[str, Any]]] = {}
        for stream, item in items:
            if stream == "raw":
                batch: PointBatch = item
                if len(batch):
                    first, last = int(batch.ts_ms.min()), int(batch.ts_ms.max())
                    self.collector.read(len(batch), first, last)
                    self.progress.update(len(batch), last, first)
            else:
                by_stream.setdefault(stream, []).append(item)
        for stream, rows in by_stream.items():
            self.collector.add(stream, rows)

    @override
    def close(self) -> None:
        self.progress.close()
        report: dict[str, Any] = {
            "site": self.site,
            "from": _iso(self.cfg.from_ms if self.cfg.from_ms is not None else None),
            "to": _iso(self.cfg.to_ms),
            **self.collector.finish(),
        }
        self.collector.close()
        if not report["from"]:
            report["from"] = _iso(report["data_from_ms"])
        if not report["to"]:
            last = report["data_to_ms"]
            report["to"] = _iso(None if last is None else last + 1)
        report["aggregates"] = {
            window_label(int(w)): v["windows"] for w, v in report["windows"].items()
        }
        report["points_aggregated"] = {
            window_label(int(w)): v["points"] for w, v in report["windows"].items()
        }
        before = None
        if self.cfg.compare is not None:
            before = json.loads(self.cfg.compare.read_text())
            report["comparison"] = compare_reports(report, before, str(self.cfg.compare))
        from reports.html import render  # plotly: loaded only when a report is written

        out = self.cfg.dir
        (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
        (out / "report.html").write_text(render(report, before))


class ReportSink(DynamicSink[tuple[str, Any]]):
    """Feeds the collector and writes the report when the flow ends (one worker)."""

    def __init__(self, cfg: BacktestReportConfig, site: str) -> None:
        self.cfg, self.site = cfg, site

    @override
    def build(self, step_id: str, worker_index: int, worker_count: int) -> _Partition:
        return _Partition(self.cfg, self.site)
