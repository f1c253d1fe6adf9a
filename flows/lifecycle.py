"""Graceful stop: the first SIGINT or SIGTERM asks every source to finish, the second aborts.

Bytewax turns SIGINT into a runtime error with a traceback and no flush. Instead, sources
poll :func:`stop_requested` (or wait on :func:`stop_event`) and end their input; the dataflow
then runs to EOF, operators flush what they hold and sinks close.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from types import FrameType

__all__ = [
    "exit_failures",
    "fail_at_exit",
    "install_signal_handlers",
    "request_stop",
    "reset",
    "run_option",
    "stop_event",
    "stop_requested",
]

log = logging.getLogger("edgeflow")


def run_option(names: tuple[str, str], argv: list[str] | None = None) -> str | None:
    """Return the value of a ``bytewax.run`` option (short or long form) this process got."""
    args = sys.argv if argv is None else argv
    for i, a in enumerate(args):
        if a in names and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(f"{names[1]}="):
            return a.split("=", 1)[1]
    return None


_stop = threading.Event()
_failures: list[str] = []


def request_stop() -> None:
    """Ask all sources to end their input."""
    _stop.set()


def stop_requested() -> bool:
    """Return True once a stop was requested."""
    return _stop.is_set()


def stop_event() -> threading.Event:
    """Return the event set on a stop request (I/O threads wait on it, never sleep)."""
    return _stop


def reset() -> None:
    """Clear a stop request and recorded failures (for tests and embedded runs)."""
    _stop.clear()
    _failures.clear()


def fail_at_exit(message: str) -> None:
    """Record that the run could not do everything (e.g. data left undelivered).

    A flow started from the command line then exits non-zero with these messages (see
    :func:`flows.entry.main_flow`); an embedded run can read :func:`exit_failures`.
    """
    _failures.append(message)


def exit_failures() -> list[str]:
    """Return what the run recorded with :func:`fail_at_exit`."""
    return list(_failures)


def _on_signal(signum: int, frame: FrameType | None) -> None:
    if _stop.is_set():
        log.error("second %s: aborting without flushing", signal.Signals(signum).name)
        os._exit(130 if signum == signal.SIGINT else 143)
    # Set before logging: a second signal can interrupt this handler while it logs, and must
    # then find the stop already requested (CI once lost the abort that way).
    _stop.set()
    log.warning(
        "stop requested (%s): finishing inputs and flushing (send it again to abort)",
        signal.Signals(signum).name,
    )


def install_signal_handlers() -> bool:
    """Install the two-stage SIGINT/SIGTERM handler; returns False off the main thread."""
    if threading.current_thread() is not threading.main_thread():
        return False
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    return True
