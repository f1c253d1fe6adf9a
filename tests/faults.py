"""Fault injection for integration tests: flows run as on a plant, services stopped and frozen.

:class:`FlowProcess` runs ``python -m bytewax.run MODULE`` in its own process (so it can be
killed with SIGKILL) and reads its log as it comes, so a test waits for what the flow says
(``wait_for``) instead of sleeping. :func:`service` stops, starts, freezes (SIGSTOP) and thaws
the services ``infra/local`` runs. :func:`wait_until` polls a condition with a deadline.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["FlowProcess", "service", "wait_until"]

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra" / "local"


def wait_until(
    check: Callable[[], Any], *, timeout_s: float, what: str, every_s: float = 0.1
) -> Any:
    """Return ``check()``'s first truthy value; fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            msg = f"timed out after {timeout_s:g} s waiting for {what} (last: {got!r})"
            raise AssertionError(msg)
        time.sleep(every_s)


def service(action: str, name: str) -> None:
    """``stop``/``start`` a service, ``freeze``/``thaw`` it (SIGSTOP/SIGCONT), ``kill`` it."""
    if action in ("stop", "start"):
        cmd = ["bash", str(INFRA / f"{action}.sh"), name]
    else:
        how = {"freeze": "stop", "thaw": "cont", "kill": "kill"}[action]
        cmd = ["bash", str(INFRA / "freeze.sh"), how, name]
    subprocess.run(cmd, check=True, capture_output=True, timeout=180)


class FlowProcess:
    """One flow process; its combined output is collected as it is printed."""

    def __init__(
        self,
        module: str,
        site_file: Path,
        *,
        cwd: Path,
        recovery: Path | None = None,
        args: Sequence[str] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        cmd = [sys.executable, "-m", "bytewax.run", module, *args]
        if recovery is not None:
            # Epochs of 1 s: a kill lands between snapshots, as it does on a plant.
            cmd += ["-r", str(recovery), "-s", "1", "-b", "0"]
        self.proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            env={
                **os.environ,
                "PYTHONPATH": str(ROOT),
                "EDGEFLOW_SITE": str(site_file),
                **(env or {}),
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._changed:
                self._lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def log(self) -> str:
        """Everything the flow printed so far."""
        with self._changed:
            return "".join(self._lines)

    def wait_for(self, text: str, *, timeout_s: float = 60, count: int = 1) -> None:
        """Wait until the flow printed ``text`` (``count`` times); fail with its log."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while "".join(self._lines).count(text) < count:
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    tail = "".join(self._lines)[-3000:]
                    msg = (
                        f"the flow did not print {text!r} x{count} within {timeout_s:g} s:\n{tail}"
                    )
                    raise AssertionError(msg)
                self._changed.wait(min(left, 0.5))

    def running(self) -> bool:
        """True while the process runs."""
        return self.proc.poll() is None

    def signal(self, sig: int = signal.SIGINT) -> None:
        """Send ``sig`` (SIGINT: a clean stop; SIGKILL: a crash)."""
        self.proc.send_signal(sig)

    def wait(self, timeout_s: float) -> int:
        """Wait for the process to end; return its exit code (fail if it does not end)."""
        try:
            rc = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            msg = f"the flow did not end within {timeout_s:g} s:\n{self.log[-3000:]}"
            raise AssertionError(msg) from None
        self._reader.join(10)
        return rc

    def kill(self) -> None:
        """SIGKILL the process (a crash: nothing is flushed) and reap it."""
        if self.running():
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self._reader.join(10)
