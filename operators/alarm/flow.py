"""Bytewax wrapper of the threshold alarms (keyed by shard)."""

from __future__ import annotations

import bytewax.operators as op
from bytewax.dataflow import Stream, operator
from bytewax.operators import KeyedStream

from operators._flow import engine_flat_map
from operators.alarm.logic import AlarmEngine, AlarmRule
from wire.records import Event, PointBatch

__all__ = ["alarms"]


@operator
def alarms(
    step_id: str, up: KeyedStream[PointBatch], rules: tuple[AlarmRule, ...]
) -> Stream[Event]:
    """Threshold alarms with hysteresis; emits raised/cleared events."""
    AlarmEngine(rules)
    return op.key_rm("unkey", engine_flat_map("eval", up, lambda: AlarmEngine(rules)))
