"""Graceful stop: the first Ctrl-C asks every source to finish, the second one aborts.

Bytewax turns SIGINT into a runtime error with a traceback and no flush. Instead, sources
poll :func:`stop_requested` and end their input; the dataflow then runs to EOF, operators
flush what they hold and sinks close their files.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

__all__ = ["install_sigint_handler", "request_stop", "reset", "stop_requested"]

log = logging.getLogger(__name__)
_stop = threading.Event()


def request_stop() -> None:
    """Ask all sources to end their input."""
    _stop.set()


def stop_requested() -> bool:
    """Return True once a stop was requested."""
    return _stop.is_set()


def reset() -> None:
    """Clear a stop request (for tests and embedded runs)."""
    _stop.clear()


def _on_sigint(signum: int, frame: FrameType | None) -> None:
    if _stop.is_set():
        raise KeyboardInterrupt
    log.warning("stop requested: finishing inputs and flushing (Ctrl-C again to abort)")
    _stop.set()


def install_sigint_handler() -> bool:
    """Install the two-stage Ctrl-C handler; returns False off the main thread."""
    if threading.current_thread() is not threading.main_thread():
        return False
    signal.signal(signal.SIGINT, _on_sigint)
    signal.signal(signal.SIGTERM, _on_sigint)
    return True
