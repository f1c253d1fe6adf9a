"""Bytewax wrapper of the anomaly-window rules (keyed by shard)."""

from __future__ import annotations

import bytewax.operators as op
from bytewax.dataflow import Stream, operator
from bytewax.operators import KeyedStream

from operators._flow import engine_flat_map
from operators.anomaly.logic import AnomalyDetector, AnomalyRule
from wire.records import Event, PointBatch

__all__ = ["anomalies"]


@operator
def anomalies(
    step_id: str,
    up: KeyedStream[PointBatch],
    rules: tuple[AnomalyRule, ...],
    *,
    location: tuple[float, float] | None = None,
) -> Stream[Event]:
    """Anomaly-window rules per tag; emits raised/cleared events.

    ``location`` (latitude, longitude) is the site's place, for rules gated on the sun.
    """
    AnomalyDetector(rules, location=location)  # validate now, not on the first item
    return op.key_rm(
        "unkey", engine_flat_map("eval", up, lambda: AnomalyDetector(rules, location=location))
    )
