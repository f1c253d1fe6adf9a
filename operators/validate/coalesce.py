"""Coalescing small point batches into larger ones (micro-batching with a latency bound).

Sources deliver what the protocol gives them: a Modbus poll, an MQTT message, one second of
a simulated site. The columnar operators pay a fixed cost per batch, so after validation the
stream is re-batched: consecutive batches of one source are merged until ``max_points`` is
reached or the oldest waiting batch has waited ``max_delay_ms`` of wall time (batches of
another source or tag table are not merged; they flush what waits). Order is kept
(merged batches are concatenated in arrival order) and the operators downstream give the same
results for any batching, so coalescing only trades a bounded latency for throughput.
"""

from __future__ import annotations

from operators._state import PickleCopy
from operators.errors import RuleError
from wire.records import PointBatch

__all__ = ["Coalescer"]


class Coalescer(PickleCopy):
    """Merges consecutive batches of the same source; see the module docstring.

    :meth:`add` returns the batches that are ready (possibly none), :meth:`due_ms` the wall
    time at which the waiting batches must leave, :meth:`take` everything waiting.
    """

    def __init__(self, *, max_points: int, max_delay_ms: int) -> None:
        if max_points <= 0 or max_delay_ms < 0:
            msg = (
                "coalescing needs max_points > 0 and max_delay_ms >= 0, "
                f"got {max_points} and {max_delay_ms}"
            )
            raise RuleError(msg)
        self.max_points = max_points
        self.max_delay_ms = max_delay_ms
        self._waiting: list[PointBatch] = []
        self._points = 0
        self._since_ms = 0

    def add(self, batch: PointBatch, now_ms: int) -> list[PointBatch]:
        """Queue ``batch``; return the merged batches that are ready, oldest first."""
        if not len(batch):
            return self.poll(now_ms)
        out: list[PointBatch] = []
        head = self._waiting[0] if self._waiting else None
        # Only batches sharing a tag table merge: a merged table would be a new object, and
        # the operators cache their per-table work by table identity.
        if head is not None and (batch.source != head.source or batch.tags is not head.tags):
            out += self.take()
        if not self._waiting:
            self._since_ms = now_ms
        self._waiting.append(batch)
        self._points += len(batch)
        if self._points >= self.max_points:
            out += self.take()
        else:
            out += self.poll(now_ms)
        return out

    def poll(self, now_ms: int) -> list[PointBatch]:
        """Return the waiting batches merged if they have waited long enough."""
        if self._waiting and now_ms >= self._since_ms + self.max_delay_ms:
            return self.take()
        return []

    def due_ms(self) -> int | None:
        """Wall time at which the waiting batches are due, or None when nothing waits."""
        return self._since_ms + self.max_delay_ms if self._waiting else None

    def take(self) -> list[PointBatch]:
        """Return everything waiting as one batch (or nothing) and start afresh."""
        if not self._waiting:
            return []
        merged = PointBatch.concat(self._waiting)
        self._waiting = []
        self._points = 0
        return [merged]
