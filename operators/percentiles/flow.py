"""Bytewax wrapper of the percentile windows (keyed by shard)."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Stream, operator
from bytewax.operators import KeyedStream, StatefulLogic
from typing_extensions import override

from operators._flow import pick
from operators.percentiles.logic import PercentileWindows
from wire.records import Kpi, PointBatch

__all__ = ["PercentilesOut", "percentiles"]


@dataclass(frozen=True)
class PercentilesOut:
    """Quantile rows (KPIs) and points that came after their window closed."""

    kpis: Stream[Kpi]
    late: Stream[PointBatch]


class _Logic(StatefulLogic[PointBatch, tuple[str, Any], PercentileWindows]):
    def __init__(self, windows: PercentileWindows) -> None:
        self.windows = windows

    @override
    def on_item(self, value: PointBatch) -> tuple[Iterable[tuple[str, Any]], bool]:
        rows, late = self.windows.process(value)
        out: list[tuple[str, Any]] = [("kpi", r) for r in rows]
        if len(late):
            out.append(("late", late))
        return out, StatefulLogic.RETAIN

    @override
    def on_eof(self) -> tuple[Iterable[tuple[str, Any]], bool]:
        return [("kpi", r) for r in self.windows.flush()], StatefulLogic.RETAIN

    @override
    def snapshot(self) -> PercentileWindows:
        return copy.deepcopy(self.windows)


@operator
def percentiles(step_id: str, up: KeyedStream[PointBatch], **options: Any) -> PercentilesOut:
    """Exact quantiles per tag and window; see :mod:`operators.percentiles.logic`."""
    PercentileWindows(**options)  # fail at build time, not on the first item

    def builder(resume: PercentileWindows | None) -> _Logic:
        return _Logic(resume or PercentileWindows(**options))

    tagged = op.stateful("windows", up, builder)
    return PercentilesOut(pick("kpis", tagged, "kpi"), pick("late", tagged, "late"))
