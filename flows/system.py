"""The flow's own events: what components report from their threads, on the flow's streams.

An input's I/O thread (a device that went away) or the Kafka sink's delivery thread cannot add
to a stream: the dataflow runs one way. It calls :func:`post` instead; an internal input of every
flow (:class:`SystemSource`, step ``_system``) drains what was posted into the ``events`` and
``dead_letters`` streams, so local sinks (console, files, a local MQTT broker) show them.

The internal input must end when the real inputs end (a bounded run must finish), so
:func:`track` wraps each real source: the system input ends once every tracked partition of
this process has ended (or a stop was requested) and nothing waits.
"""

from __future__ import annotations

import collections
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

from bytewax.inputs import (
    DynamicSource,
    FixedPartitionedSource,
    Source,
    StatefulSourcePartition,
    StatelessSourcePartition,
)
from typing_extensions import override

from flows import recovery
from flows.lifecycle import stop_requested
from flows.recovery import note_epoch, start_epoch
from wire.records import DeadLetter, Event

__all__ = ["SystemSource", "post", "track"]

_queue: collections.deque[Event | DeadLetter] = collections.deque(maxlen=100_000)
_lock = threading.Lock()
_active = 0
_started = 0


def post(item: Event | DeadLetter) -> None:
    """Put an event or dead letter on the flow's streams (any thread)."""
    _queue.append(item)


def _drain(n: int) -> list[Event | DeadLetter]:
    out: list[Event | DeadLetter] = []
    while _queue and len(out) < n:
        out.append(_queue.popleft())
    return out


def _inputs_done() -> bool:
    with _lock:
        return _started > 0 and _active == 0


class _Tracked(StatefulSourcePartition[Any, Any]):
    def __init__(self, inner: StatefulSourcePartition[Any, Any]) -> None:
        global _active, _started
        self.inner = inner
        self.done = False
        # Bytewax ends an input partition's epoch with each snapshot (see flows.recovery).
        self.epoch = start_epoch()
        note_epoch(self.epoch)
        with _lock:
            _active += 1
            _started += 1

    def _end(self) -> None:
        global _active
        if not self.done:
            self.done = True
            with _lock:
                _active -= 1

    @override
    def next_batch(self) -> list[Any]:
        if stop_requested():  # SIGINT/SIGTERM: every input ends, whatever it reads from
            self._end()
            raise StopIteration
        try:
            return list(self.inner.next_batch())
        except StopIteration:
            self._end()
            raise

    @override
    def next_awake(self) -> datetime | None:
        return self.inner.next_awake()

    @override
    def snapshot(self) -> Any:
        state = self.inner.snapshot()
        self.epoch += 1
        note_epoch(self.epoch)
        return state

    @override
    def close(self) -> None:
        self._end()
        self.inner.close()


class _TrackedSource(FixedPartitionedSource[Any, Any]):
    def __init__(self, inner: FixedPartitionedSource[Any, Any]) -> None:
        self.inner = inner

    @override
    def list_parts(self) -> list[str]:
        return self.inner.list_parts()

    @override
    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> _Tracked:
        return _Tracked(self.inner.build_part(step_id, for_part, resume_state))


def track(source: Source[Any]) -> Source[Any]:
    """Wrap a partitioned source so the system input knows when the real inputs ended."""
    if isinstance(source, FixedPartitionedSource):
        return _TrackedSource(source)
    return source  # a dynamic source (e.g. from a plugin) ends when the flow stops


class _SystemPartition(StatelessSourcePartition[Event | DeadLetter]):
    @override
    def next_batch(self) -> list[Event | DeadLetter]:
        items = _drain(1000)
        if not items and (stop_requested() or _inputs_done()):
            raise StopIteration
        return items

    @override
    def next_awake(self) -> datetime | None:
        return None if _queue else datetime.now(UTC) + timedelta(milliseconds=100)


class SystemSource(DynamicSource[Event | DeadLetter]):
    """Drains :func:`post` on every worker; ends with the real inputs."""

    @override
    def build(self, step_id: str, worker_index: int, worker_count: int) -> _SystemPartition:
        return _SystemPartition()


def reset() -> None:
    """Forget tracked inputs and posted items (between runs in one process, e.g. tests)."""
    global _active, _started
    with _lock:
        _active = _started = 0
    _queue.clear()
    recovery.reset_epochs()
