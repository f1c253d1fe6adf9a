"""Console sink: short human-readable lines about what the flow produces."""

from __future__ import annotations

import sys
from typing import Any, TextIO

from bytewax.outputs import DynamicSink, StatelessSinkPartition
from typing_extensions import override

from wire.records import POWER_UNITS, DeadLetter, Event, Kpi, WindowAggregates, ms_to_iso

__all__ = ["ConsoleSink", "format_item"]


def _fmt_agg(w: WindowAggregates, max_rows: int) -> list[str]:
    head = f"[{w.label} window {ms_to_iso(w.start_ms)}] {len(w)} tags, {int(w.count.sum())} points"
    lines = [head]
    for i in range(min(max_rows, len(w))):
        ref = w.tags[i]
        extra = ""
        if ref.unit in POWER_UNITS:
            extra = f" energy={w.integral[i] / 3_600_000:.3f} {POWER_UNITS[ref.unit]}"
        lines.append(
            f"    {ref.path:<55} n={int(w.count[i]):<5} mean={w.mean[i]:10.3f} "
            f"min={w.min[i]:10.3f} max={w.max[i]:10.3f} {ref.unit}{extra}"
        )
    if len(w) > max_rows:
        lines.append(f"    ... and {len(w) - max_rows} more tags")
    return lines


def format_item(stream: str, item: Any, *, max_rows: int = 6) -> list[str]:
    """Render one stream item as console lines."""
    if isinstance(item, WindowAggregates):
        return [line for w in item.windows() for line in _fmt_agg(w, max_rows)]
    if isinstance(item, Event):
        state = f" {item.state}" if item.state else ""
        return [
            f"[{item.kind}{state}] {ms_to_iso(item.ts_ms)} {item.rule} {item.path}: {item.message}"
        ]
    if isinstance(item, Kpi):
        return [f"[kpi] {ms_to_iso(item.start_ms)} {item.path} {item.name}={item.value:.4g}"]
    if isinstance(item, DeadLetter):
        return [f"[{stream}] {item.stage}: {item.reason}"]
    return [f"[{stream}] {item!r}"]


class _ConsolePartition(StatelessSinkPartition[tuple[str, Any]]):
    def __init__(self, out: TextIO, max_rows: int) -> None:
        self.out = out
        self.max_rows = max_rows

    @override
    def write_batch(self, items: list[tuple[str, Any]]) -> None:
        lines: list[str] = []
        for stream, item in items:
            lines.extend(format_item(stream, item, max_rows=self.max_rows))
        if lines:
            self.out.write("\n".join(lines) + "\n")
            self.out.flush()


class ConsoleSink(DynamicSink[tuple[str, Any]]):
    """Print ``(stream name, item)`` pairs to stdout."""

    def __init__(self, *, max_rows: int = 6, out: TextIO | None = None) -> None:
        self.max_rows = max_rows
        self.out = out

    @override
    def build(self, step_id: str, worker_index: int, worker_count: int) -> _ConsolePartition:
        return _ConsolePartition(self.out or sys.stdout, self.max_rows)
