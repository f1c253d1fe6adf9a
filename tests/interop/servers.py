"""Start the independent protocol servers of tests/interop (node-opcua, modbus-serial)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class NodeServer:
    """One ``node tests/interop/<script>`` process; restartable on the same port."""

    def __init__(self, script: str, *args: str, port: int | None = None) -> None:
        if shutil.which("node") is None or not (HERE / "node_modules").is_dir():
            pytest.fail("the interop servers are not installed: run bash infra/local/install.sh")
        self.script, self.args = script, list(args)
        self.port = port or free_port()
        self.proc: subprocess.Popen[str] | None = None
        self.ready = ""
        self.output: list[str] = []

    def start(self) -> NodeServer:
        self.proc = subprocess.Popen(
            ["node", str(HERE / self.script), "--port", str(self.port), *self.args],
            cwd=HERE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "NODE_NO_WARNINGS": "1"},
        )
        got = threading.Event()

        def pump() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                self.output.append(line)
                if line.startswith("READY "):
                    self.ready = line.split(" ", 1)[1].strip()
                    got.set()

        threading.Thread(target=pump, daemon=True).start()
        if not got.wait(60):
            self.stop()
            pytest.fail(f"{self.script} did not start:\n{''.join(self.output)[-3000:]}")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self, down_s: float) -> None:
        self.stop()
        time.sleep(down_s)  # the outage being simulated, not a synchronisation
        self.start()
