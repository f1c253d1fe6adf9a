"""A sink that never makes the flow wait: rows go to a durable spool, a thread writes them.

:func:`spooled_output` wires it: the rows go to one :class:`Spooled` step (a stateful step,
so it sees the end of its input and can emit): ``on_batch`` appends rows to a
:class:`connectors._spool.Spool` (durable at every epoch snapshot; on resume, what was spooled
after the snapshot is dropped, the replay appends it again); what the writer reports (its
connection state, rows the destination refused, spool overflows) leaves the step as
``events`` and ``dead_letters`` within a fraction of a second; at the end of the input the
writer gets up to ``close_timeout_s`` to deliver what is left, then the step emits what that
produced, so a bounded run's outputs are complete. A run that leaves rows behind exits
non-zero saying where they are kept.

:class:`Writer` is the thread: it reads spooled rows oldest first and hands them to
:meth:`Writer.deliver`, which a sink implements; raising :class:`Outage` means "not now" (the
rows stay, the writer backs off and reports the state change once), returning means delivered
(rows the destination refused are reported through :meth:`Writer.report` inside ``deliver``).
A write that has not returned for ``stall_after_s`` is reported as a stall.
"""

from __future__ import annotations

import collections
import logging
import pickle
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Stream
from bytewax.operators import StatefulBatchLogic
from typing_extensions import override

from connectors._io import Backoff, Link
from connectors._spool import Spool, SpoolOverflow
from connectors.errors import ConnectorError
from flows.build import Build
from flows.lifecycle import fail_at_exit
from flows.metrics import (
    SINK_BUFFERED,
    SINK_FAILURES,
    SINK_LATENCY,
    SINK_RETRIES,
    SINK_ROWS,
    register_check,
)
from wire.records import DeadLetter, Event, now_ms

__all__ = ["Outage", "SpoolSettings", "Spooled", "Writer", "spool_ready", "spooled_output"]

log = logging.getLogger(__name__)

Row = tuple[str, dict[str, Any]]
Report = Event | DeadLetter

#: How often a live step passes on what its writer reported (events within this, plus a poll).
REPORT_INTERVAL_S = 0.25


class Outage(ConnectorError):
    """The destination cannot take rows now (down, unreachable, refusing our credentials)."""


@dataclass(frozen=True, kw_only=True)
class SpoolSettings:
    """Where a sink spools and how long it may take to finish; from the sink's config."""

    spool_dir: Path
    sink_id: str
    path: str
    close_timeout_s: float
    max_bytes: int
    max_age_s: float
    overflow: SpoolOverflow

    @classmethod
    def of(cls, cfg: Any, spool_dir: Path, path: str) -> SpoolSettings:
        """Take them from a sink config with :class:`connectors._spool_options.SpoolOptions`."""
        return cls(
            spool_dir=spool_dir,
            sink_id=cfg.id,
            path=path,
            close_timeout_s=cfg.close_timeout_s,
            max_bytes=cfg.spool_max_bytes,
            max_age_s=cfg.spool_max_age_s,
            overflow=cfg.spool_overflow,
        )


class Writer(threading.Thread):
    """Delivers spooled rows; subclasses implement :meth:`deliver` (and :meth:`disconnect`)."""

    batch_rows = 5000
    max_backoff_s = 10.0
    stall_after_s = 10.0

    def __init__(
        self,
        spool: Spool,
        report: Callable[[Report], None],
        *,
        name: str,
        endpoint: str,
        path: str,
    ) -> None:
        super().__init__(name=f"edgeflow-{name}", daemon=True)
        self.spool = spool

        def counted(item: Report) -> None:
            if isinstance(item, DeadLetter):  # a row the destination refused for good
                SINK_FAILURES.labels(name).inc()
            report(item)

        self.report = counted
        self.stop = threading.Event()
        self.draining = threading.Event()
        self.written = 0
        self.busy_since: float | None = None
        self.link = Link(name, endpoint, path, report, kind="sink")
        self.sink_id = name
        register_check("sink", name, self._ready)
        self._watch = threading.Thread(target=self._watchdog, daemon=True)
        self.state_detail = ""

    def _ready(self) -> tuple[bool, str]:
        return spool_ready(self.link, self.spool)

    def deliver(self, rows: list[Row]) -> None:
        """Write ``rows``; raise :class:`Outage` to keep them for later."""
        raise NotImplementedError

    def disconnect(self) -> None:
        """Drop the connection (after an outage, and at the end)."""

    def _watchdog(self) -> None:
        while not self.stop.wait(1.0):
            since = self.busy_since
            if since is not None and time.monotonic() - since > self.stall_after_s:
                self.link.down(
                    f"a write has had no answer for {time.monotonic() - since:.0f} s (hung?); "
                    f"{self.spool.pending()} rows spooled"
                )

    def run(self) -> None:
        self._watch.start()
        backoff = Backoff(max_s=self.max_backoff_s)
        saved = 0.0
        while not self.stop.is_set():
            records = self.spool.read(self.spool.acked, self.batch_rows)
            if not records:
                SINK_BUFFERED.labels(self.sink_id).set(0)
                if self.draining.is_set():
                    return
                self.stop.wait(0.05)
                continue
            rows: list[Row] = [pickle.loads(r.data) for r in records]
            self.busy_since = time.monotonic()
            SINK_BUFFERED.labels(self.sink_id).set(self.spool.pending())
            try:
                self.deliver(rows)
            except Outage as e:
                SINK_RETRIES.labels(self.sink_id).inc()
                self.link.down(str(e))
                self.disconnect()
                self.stop.wait(backoff.next_delay())
                continue
            except Exception as e:  # a bug must not stop the writer silently
                log.exception("%s: unexpected failure", self.name)
                self.link.down(f"{type(e).__name__}: {e}")
                self.disconnect()
                self.stop.wait(backoff.next_delay())
                continue
            finally:
                if self.busy_since is not None:
                    SINK_LATENCY.labels(self.sink_id).observe(time.monotonic() - self.busy_since)
                self.busy_since = None
            self.written += len(rows)
            SINK_ROWS.labels(self.sink_id).inc(len(rows))
            self.spool.ack(records[-1].seq)
            SINK_BUFFERED.labels(self.sink_id).set(self.spool.pending())
            if time.monotonic() - saved > 1.0:  # what was written is not written again
                self.spool.save_meta()
                saved = time.monotonic()
            self.link.up(self.state_detail)
            backoff.reset()


def spool_ready(link: Link, spool: Spool) -> tuple[bool, str]:
    """Return whether a spooled sink is ready: writing, or buffering under 90% of its spool."""
    pending = spool.pending()
    if link.up_ is not False:
        return True, ""
    if spool.size_bytes() >= 0.9 * spool.max_bytes:
        return False, f"{link.reason}; spool of {pending} rows is 90% full"
    return True, f"buffering {pending} rows: {link.reason}"


MakeWriter = Callable[[Spool, Callable[[Report], None]], Writer]


class Spooled(StatefulBatchLogic[Row, Report, dict[str, int]]):
    """The flow's side of a spooled sink: spools rows, passes on what the writer reports."""

    def __init__(
        self, settings: SpoolSettings, make_writer: MakeWriter, resume: dict[str, int] | None
    ) -> None:
        self.settings = settings
        self.reports: collections.deque[Report] = collections.deque()
        self.spool = Spool(
            settings.spool_dir,
            max_bytes=settings.max_bytes,
            max_age_s=settings.max_age_s,
            overflow=settings.overflow,
            on_overflow=self._overflow,
        )
        if isinstance(resume, dict):
            # Rows spooled after the snapshot are written again by the replay (upserts).
            self.spool.truncate(resume["seq"])
        self.final_seq: int | None = None
        self.writer = make_writer(self.spool, self.reports.append)
        self.writer.start()

    def _overflow(self, count: int, why: str) -> None:
        s = self.settings
        self.reports.append(
            Event(
                kind="spool",
                rule=s.sink_id,
                path=s.path,
                ts_ms=now_ms(),
                severity="major",
                state="overflow",
                message=f"{s.sink_id} spool: {count} rows dropped ({why})",
                details={"dropped": count, "policy": s.overflow},
            )
        )

    def _take(self) -> list[Report]:
        out: list[Report] = []
        while self.reports:
            out.append(self.reports.popleft())
        return out

    @property
    def written(self) -> int:
        """Rows delivered so far (by this process)."""
        return self.writer.written

    @override
    def on_batch(self, values: list[Row]) -> tuple[Iterable[Report], bool]:
        for stream, d in values:
            if d.get("transient"):
                continue  # Sparkplug is_transient: of interest live, never historised
            self.spool.append(pickle.dumps((stream, d), protocol=pickle.HIGHEST_PROTOCOL), 0)
        self.spool.flush()
        return self._take(), StatefulBatchLogic.RETAIN

    @override
    def on_notify(self) -> tuple[Iterable[Report], bool]:
        return self._take(), StatefulBatchLogic.RETAIN

    @override
    def notify_at(self) -> datetime | None:
        if self.final_seq is not None:
            return None
        return datetime.now(UTC) + timedelta(seconds=REPORT_INTERVAL_S)

    @override
    def on_eof(self) -> tuple[Iterable[Report], bool]:
        self.finish()
        return self._take(), StatefulBatchLogic.RETAIN

    @override
    def snapshot(self) -> dict[str, int]:
        if self.final_seq is not None:
            return {"seq": self.final_seq}
        return {"seq": self.spool.sync()}

    def finish(self) -> None:
        """Give the writer ``close_timeout_s`` to deliver what is left, then stop it."""
        if self.final_seq is not None:
            return
        s = self.settings
        self.final_seq = self.spool.sync()
        w = self.writer
        w.draining.set()
        w.join(s.close_timeout_s)
        w.stop.set()
        w.join(2.0)
        left = self.spool.pending()
        self.spool.save_meta()
        self.spool.close()
        w.disconnect()
        if left:
            msg = (
                f"{left} rows for {s.sink_id} were not written within {s.close_timeout_s:g} s; "
                f"they are kept in {self.spool.dir} and written by the next run"
            )
            log.error("%s", msg)
            fail_at_exit(msg)


def _is_dead_letter(item: object) -> bool:
    return isinstance(item, DeadLetter)


def spooled_output(
    b: Build, step_id: str, rows: Stream[Row], factory: Callable[[dict[str, int] | None], Spooled]
) -> None:
    """Send ``rows`` to one :class:`Spooled` step built by ``factory(resume_state)``.

    What its writer reports joins the ``events`` and ``dead_letters`` streams.
    """
    keyed = op.key_on(f"{step_id}_key", rows, lambda _: step_id)
    reports = op.key_rm(f"{step_id}_reports", op.stateful_batch(step_id, keyed, factory))
    split = op.branch(f"{step_id}_split", reports, _is_dead_letter)
    b.add("dead_letters", split.trues).add("events", split.falses)
