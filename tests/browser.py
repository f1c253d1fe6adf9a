"""A page in headless Chromium, read while it runs (Chrome DevTools Protocol over a WebSocket).

``chromium --dump-dom`` dumps a page at its load event: too early for a page that fills
itself from a live connection. :class:`Browser` starts Chromium with a debugging port and
evaluates JavaScript in the page whenever the test asks, through a minimal WebSocket client
(RFC 6455 text frames: enough for the DevTools protocol).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import struct
import subprocess
import tempfile
import urllib.request
from typing import Any
from urllib.parse import urlparse

from tests.faults import wait_until
from tests.interop.servers import free_port

__all__ = ["Browser"]


class _WebSocket:
    def __init__(self, url: str) -> None:
        u = urlparse(url)
        self.sock = socket.create_connection((u.hostname, u.port), timeout=30)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET {u.path} HTTP/1.1\r\nHost: {u.hostname}:{u.port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.sock.recv(1)
        assert b" 101 " in head.split(b"\r\n")[0], head

    def _exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            assert chunk, "the browser closed the connection"
            buf += chunk
        return buf

    def send(self, text: str) -> None:
        data, mask = text.encode(), os.urandom(4)
        n = len(data)
        head = bytes([0x81]) + (
            bytes([0x80 | n])
            if n < 126
            else bytes([0x80 | 126]) + struct.pack(">H", n)
            if n < 65536
            else bytes([0x80 | 127]) + struct.pack(">Q", n)
        )
        self.sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

    def recv(self) -> str:
        message = b""
        while True:
            b0, b1 = self._exact(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._exact(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._exact(8))[0]
            message += self._exact(n)
            if b0 & 0x80:  # FIN
                return message.decode()

    def close(self) -> None:
        self.sock.close()


class Browser:
    """Headless Chromium showing ``url``; :meth:`evaluate` runs JavaScript in the page."""

    def __init__(self, url: str) -> None:
        chromium = shutil.which("chromium")
        assert chromium is not None, "infra/local/install.sh installs chromium"
        self.profile = tempfile.mkdtemp(prefix="edgeflow-chromium-")
        port = free_port()
        self.proc = subprocess.Popen(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                f"--remote-debugging-port={port}",
                f"--user-data-dir={self.profile}",
                url,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        page = wait_until(lambda: self._page(port), timeout_s=60, what="Chromium's page target")
        self.ws = _WebSocket(page["webSocketDebuggerUrl"])
        self._id = 0

    @staticmethod
    def _page(port: int) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as r:
                targets = json.load(r)
        except OSError:
            return None
        return next((t for t in targets if t.get("type") == "page"), None)

    def evaluate(self, expression: str) -> Any:
        """Return the value of ``expression`` in the page."""
        self._id += 1
        self.ws.send(
            json.dumps(
                {
                    "id": self._id,
                    "method": "Runtime.evaluate",
                    "params": {"expression": expression, "returnByValue": True},
                }
            )
        )
        while True:
            reply = json.loads(self.ws.recv())
            if reply.get("id") == self._id:
                return reply["result"]["result"].get("value")

    def close(self) -> None:
        """Stop Chromium."""
        self.ws.close()
        self.proc.terminate()
        self.proc.wait(timeout=20)
        shutil.rmtree(self.profile, ignore_errors=True)
