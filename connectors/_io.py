"""Protocol I/O off the Bytewax worker: threads, bounded channels, connection state, episodes.

Every protocol input runs its connections in threads of its own (one per device, server or
broker client). They hand data to the worker through a :class:`Channel` (a bounded queue with
a named overflow policy); the partition's ``next_batch`` only drains it. A dead, silent or slow
device therefore delays only its own data, and the worker stays free for every other input.

- :class:`Link` is the connection state of one endpoint: each change (and only a change) is one
  log line and one ``source`` event (``source_down`` with the reason, ``source_up``).
- :class:`Backoff`: the first reconnect attempt is immediate, then the delay doubles up to a
  cap (a few seconds), so data is back within about the cap of the endpoint returning.
- :class:`Episodes`: a problem that repeats on every poll (a refused register, an undecodable
  value) is one dead letter when it starts and one, with its count, when it ends.
- :class:`ThreadedPartition` runs ``run()`` in a daemon thread and turns what it put on the
  channel into items for the flow; a stop request ends it within about a second.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, Literal, TypeVar

from bytewax.inputs import StatefulSourcePartition
from typing_extensions import override

from flows.lifecycle import stop_event, stop_requested
from flows.metrics import CONNECTED, OVERFLOW_DROPS, QUEUE_DEPTH, RECONNECTS, register_connection
from wire.records import DeadLetter, Event, PointBatch, TextPoints, now_ms

__all__ = [
    "Backoff",
    "Channel",
    "Episodes",
    "Link",
    "Overflow",
    "SourceItem",
    "ThreadedPartition",
]

log = logging.getLogger(__name__)

Overflow = Literal["block", "drop_oldest", "drop_newest"]
SourceItem = PointBatch | DeadLetter | Event | TextPoints
T = TypeVar("T")
S = TypeVar("S")


class Channel(Generic[T]):
    """A bounded hand-off from I/O threads to the worker.

    ``overflow`` names what happens when it is full: ``block`` makes the producer wait (until
    there is room or a stop is requested), ``drop_oldest`` discards the oldest waiting item,
    ``drop_newest`` the one being put. Drops are counted; :meth:`take_dropped` returns (and
    resets) the count so the owner can report them. ``on_drop`` is called with each dropped
    item (e.g. to acknowledge an MQTT message that will never be processed).
    """

    def __init__(
        self,
        maxsize: int,
        overflow: Overflow = "block",
        *,
        on_drop: Callable[[T], None] | None = None,
    ) -> None:
        if maxsize <= 0:
            msg = f"channel size must be positive, got {maxsize}"
            raise ValueError(msg)
        self.maxsize = maxsize
        self.overflow = overflow
        self._items: collections.deque[T] = collections.deque()
        self._cond = threading.Condition()
        self._dropped = 0
        self._on_drop = on_drop
        self.put_total = 0
        self.name = ""  # the owner's, for metrics

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: T, *, stop: threading.Event | None = None) -> bool:
        """Hand over ``item``; returns False when it (or an older item) was dropped."""
        dropped: T | None = None
        with self._cond:
            if len(self._items) >= self.maxsize:
                if self.overflow == "block":
                    while len(self._items) >= self.maxsize:
                        if (stop or stop_event()).is_set():
                            return False
                        self._cond.wait(0.1)
                elif self.overflow == "drop_newest":
                    self._dropped += 1
                    dropped = item
                else:
                    dropped = self._items.popleft()
                    self._dropped += 1
            if dropped is not item:
                self._items.append(item)
                self.put_total += 1
        if dropped is not None:
            OVERFLOW_DROPS.labels(self.name).inc()
            if self._on_drop is not None:
                self._on_drop(dropped)
        return dropped is None

    def drain(self, max_items: int) -> list[T]:
        """Take up to ``max_items`` waiting items, oldest first (never blocks)."""
        with self._cond:
            n = min(max_items, len(self._items))
            out = [self._items.popleft() for _ in range(n)]
            if n:
                self._cond.notify_all()
        return out

    def take_dropped(self) -> int:
        """Return the number of items dropped since the last call."""
        with self._cond:
            n, self._dropped = self._dropped, 0
        return n


@dataclass
class Backoff:
    """Reconnect delays: 0 (immediate), then ``initial_s`` doubling up to ``max_s``."""

    initial_s: float = 0.5
    max_s: float = 2.0
    failures: int = 0

    def next_delay(self) -> float:
        """Return the delay before the next attempt after one more failure."""
        self.failures += 1
        if self.failures == 1:
            return 0.0
        return float(min(self.max_s, self.initial_s * 2 ** (self.failures - 2)))

    def reset(self) -> None:
        """Forget past failures (after a successful connection)."""
        self.failures = 0


@dataclass
class Link:
    """The connection state of one endpoint, reported once per change.

    ``emit`` receives the :class:`Event` of each change (``kind="source"``, ``rule`` = the
    input id, ``state`` = ``source_down`` or ``source_up``, the reason in ``message``).
    """

    input_id: str
    endpoint: str
    path: str
    emit: Callable[[Event], None]
    up_: bool | None = None
    since_ms: int = 0
    reason: str = ""
    reconnects: int = 0
    changes: int = field(default=0)
    #: ``input``: the input's readiness follows its links (:func:`flows.metrics.ready`).
    kind: Literal["input", "sink"] = "input"

    def __post_init__(self) -> None:
        CONNECTED.labels(self.input_id, self.endpoint).set(0)
        if self.kind == "input":
            register_connection(self.input_id, self.endpoint, self._state)

    def _state(self) -> tuple[bool | None, str]:
        return self.up_, self.reason

    @property
    def is_up(self) -> bool:
        """True while the endpoint is connected and answering."""
        return bool(self.up_)

    def up(self, detail: str = "") -> None:
        """Record a working connection (an event only when it was not up)."""
        if self.up_:
            return
        now = now_ms()
        was_down = self.up_ is False
        if was_down:
            self.reconnects += 1
            log.info(
                "%s: %s is back after %.1f s (%s)",
                self.input_id,
                self.endpoint,
                (now - self.since_ms) / 1000,
                self.reason,
            )
        else:
            suffix = f" ({detail})" if detail else ""
            log.info("%s: connected to %s%s", self.input_id, self.endpoint, suffix)
        self.up_, self.since_ms, self.reason = True, now, ""
        self.changes += 1
        CONNECTED.labels(self.input_id, self.endpoint).set(1)
        if was_down:
            RECONNECTS.labels(self.input_id, self.endpoint).inc()
        self.emit(
            Event(
                kind="source",
                rule=self.input_id,
                path=self.path,
                ts_ms=now,
                severity="info",
                state="source_up",
                message=f"source_up: {self.endpoint}{' (' + detail + ')' if detail else ''}",
                details={"endpoint": self.endpoint, "reconnects": self.reconnects},
            )
        )

    def down(self, reason: str) -> None:
        """Record a failed or lost connection (an event only when it was not already down)."""
        if self.up_ is False:
            self.reason = self.reason or reason
            return
        now = now_ms()
        log.warning("%s: %s is down: %s (retrying)", self.input_id, self.endpoint, reason)
        self.up_, self.since_ms, self.reason = False, now, reason
        self.changes += 1
        CONNECTED.labels(self.input_id, self.endpoint).set(0)
        self.emit(
            Event(
                kind="source",
                rule=self.input_id,
                path=self.path,
                ts_ms=now,
                severity="warning",
                state="source_down",
                message=f"source_down: {self.endpoint}: {reason}",
                details={"endpoint": self.endpoint, "reason": reason},
            )
        )


@dataclass
class _Episode:
    reason: str
    payload: Any
    first_ms: int
    count: int = 1


class Episodes:
    """One dead letter when a repeating problem starts and one when it ends (with its count).

    ``key`` identifies the problem (e.g. ``("refused", "holding", 500)``): while it repeats it
    is only counted; :meth:`clear` (called when the same thing works again) ends the episode.
    """

    def __init__(self, stage: str, source: str) -> None:
        self.stage = stage
        self.source = source
        self._open: dict[Hashable, _Episode] = {}

    def __len__(self) -> int:
        return len(self._open)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._open

    def seen(self, key: Hashable, reason: str, payload: Any) -> DeadLetter | None:
        """Count one occurrence; return the dead letter that opens the episode, if new."""
        ep = self._open.get(key)
        if ep is not None:
            ep.count += 1
            return None
        now = now_ms()
        self._open[key] = _Episode(reason, payload, now)
        log.warning("%s: %s (reported once until it clears)", self.source, reason)
        return DeadLetter(
            self.stage, f"{reason} (first of an episode)", payload, ts_ms=now, source=self.source
        )

    def clear(self, key: Hashable) -> DeadLetter | None:
        """End the episode of ``key``; return its closing dead letter (None if none was open)."""
        ep = self._open.pop(key, None)
        if ep is None:
            return None
        now = now_ms()
        log.info("%s: cleared after %d occurrences: %s", self.source, ep.count, ep.reason)
        return DeadLetter(
            self.stage,
            f"{ep.reason} (episode ended: {ep.count} occurrences in "
            f"{(now - ep.first_ms) / 1000:.1f} s)",
            {**ep.payload, "occurrences": ep.count} if isinstance(ep.payload, dict) else ep.payload,
            ts_ms=now,
            source=self.source,
        )

    def keys(self) -> list[Hashable]:
        """Keys of the open episodes."""
        return list(self._open)


class ThreadedPartition(StatefulSourcePartition[SourceItem, S]):
    """A source partition whose I/O runs in a daemon thread; ``next_batch`` only drains.

    Subclasses implement :meth:`run` (the thread body: connect, read, ``self.channel.put``
    until ``self.stopping`` is set) and :meth:`assemble` (turn drained channel items into
    flow items). A stop request (Ctrl-C, SIGTERM) or :meth:`close` sets ``self.stopping``;
    once the thread has ended and the channel is empty, the partition ends.
    """

    poll_interval_ms: int = 20
    #: How long a stop request waits for the thread to finish its cleanup (e.g. closing a
    #: server session) before the input ends anyway; the whole stop must stay within 2 s.
    stop_grace_s: float = 0.0

    def __init__(
        self,
        name: str,
        channel: Channel[Any],
        *,
        batch_size: int = 10_000,
    ) -> None:
        self.name = name
        self.channel = channel
        channel.name = name
        self.batch_size = batch_size
        self.stopping = threading.Event()
        self.failed: BaseException | None = None
        self._stop_seen: float | None = None
        self._thread = threading.Thread(target=self._body, name=f"edgeflow-{name}", daemon=True)

    def start(self) -> None:
        """Start the I/O thread (call at the end of the subclass constructor)."""
        self._thread.start()

    def _body(self) -> None:
        try:
            self.run()
        except BaseException as e:  # the thread must never die silently
            log.exception("%s: I/O thread failed", self.name)
            self.failed = e
        finally:
            self.stopping.set()

    def run(self) -> None:
        """Do the I/O (the thread's body); return when ``self.stopping`` is set or input ends."""
        raise NotImplementedError

    def assemble(self, items: list[Any]) -> list[SourceItem]:
        """Turn drained channel items into flow items (default: as they are)."""
        return list(items)

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds`` unless stopping; return True when stopping."""
        if seconds > 0:
            self.stopping.wait(seconds)
        if stop_requested():
            self.stopping.set()
        return self.stopping.is_set()

    def finished(self) -> bool:
        """Return True when the input has ended: stopping, the thread done, nothing waiting.

        On a stop request the thread is waited for only ``stop_grace_s``: it may be blocked in
        a read that only a timeout ends, and a stop must take at most a second or two.
        """
        done = not self._thread.is_alive() or self._grace_over()
        return self.stopping.is_set() and done and not len(self.channel)

    def _grace_over(self) -> bool:
        if not stop_requested():
            return False
        if self._stop_seen is None:
            self._stop_seen = time.monotonic()
        return time.monotonic() - self._stop_seen >= self.stop_grace_s

    @override
    def next_batch(self) -> list[SourceItem]:
        if stop_requested():
            self.stopping.set()
        items = self.channel.drain(self.batch_size)
        QUEUE_DEPTH.labels(self.name).set(len(self.channel))
        if not items and self.finished():
            if self.failed is not None and not stop_requested():
                msg = f"{self.name}: I/O thread failed: {self.failed}"
                raise RuntimeError(msg) from self.failed
            raise StopIteration
        return self.assemble(items) if items else []

    @override
    def next_awake(self) -> datetime | None:
        if len(self.channel) or self.stopping.is_set():
            return None
        return datetime.now(UTC) + timedelta(milliseconds=self.poll_interval_ms)

    def interrupt(self) -> None:
        """Break the I/O thread out of a blocking call (e.g. close its socket); default: none."""

    @override
    def close(self) -> None:
        self.stopping.set()
        self.interrupt()
        self._thread.join(timeout=max(1.0, self.stop_grace_s))


def monotonic_ms() -> float:
    """Monotonic clock in milliseconds (for schedules, never for timestamps)."""
    return time.monotonic() * 1000


def flatten(groups: Iterable[list[T]]) -> list[T]:
    """Concatenate lists."""
    return [x for g in groups for x in g]
