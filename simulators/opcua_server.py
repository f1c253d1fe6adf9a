"""Serve the simulated energy site over real OPC UA (asyncua).

Variables live under ``Objects/Site/<area>/<line>/<machine>/<tag>`` (folder
``ns=2;s=Site``) with string node ids ``ns=2;s=<machine>.<tag>``; values update every
``update_ms``. Security policies None, Basic256Sha256 Sign and SignAndEncrypt are offered when
a certificate is given; a username and password can be required.
``edgeflow sim opcua --port 4840`` runs it.
"""

from __future__ import annotations

import argparse
import asyncio
import threading
from pathlib import Path
from typing import Any

from asyncua import Server, ua
from asyncua.server.user_managers import UserManager

from simulators.errors import SimulatorSetupError
from simulators.site import EnergySite
from wire.records import now_ms

__all__ = ["NAMESPACE", "OpcUaSiteServer"]

NAMESPACE = "urn:edgeflow:simulator"


class _Users(UserManager):
    def __init__(self, users: dict[str, str]) -> None:
        self.users = users

    def get_user(
        self,
        iserver: Any,
        username: str | None = None,
        password: str | None = None,
        certificate: Any = None,
    ) -> Any:
        from asyncua.server.user_managers import User, UserRole

        if username is not None and self.users.get(username) == password:
            return User(role=UserRole.User, name=username)
        return None


class OpcUaSiteServer:
    """An OPC UA server in a background thread, fed by an :class:`EnergySite`."""

    def __init__(
        self,
        site: EnergySite,
        *,
        port: int,
        host: str = "127.0.0.1",
        update_ms: int = 1000,
        cert: Path | None = None,
        key: Path | None = None,
        users: dict[str, str] | None = None,
    ) -> None:
        self.site, self.host, self.port, self.update_ms = site, host, port, update_ms
        self.cert, self.key, self.users = cert, key, users
        self.url = f"opc.tcp://{host}:{port}/edgeflow/"
        self.vars: dict[str, Any] = {}
        self.values: dict[str, float] = {}
        self._loop = asyncio.new_event_loop()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None

    async def _main(self) -> None:
        server = Server(user_manager=_Users(self.users) if self.users else None)
        await server.init()
        server.set_endpoint(self.url)
        server.set_server_name("edgeflow site simulator")
        if self.cert and self.key:
            await server.load_certificate(str(self.cert))
            await server.load_private_key(str(self.key))
            server.set_security_policy(
                [
                    ua.SecurityPolicyType.NoSecurity,
                    ua.SecurityPolicyType.Basic256Sha256_Sign,
                    ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
                ]
            )
        if self.users:
            server.set_security_IDs(["Username"])
        idx = await server.register_namespace(NAMESPACE)
        root = await server.nodes.objects.add_folder(ua.NodeId("Site", idx), "Site")
        folders: dict[tuple[str, ...], Any] = {}
        batch = self.site.step(1)
        for i, ref in enumerate(batch.tags):
            _, _, area, line, machine, tag = ref.path.split("/")
            parent = root
            for depth, name in enumerate((area, line, machine)):
                key = (area, line, machine)[: depth + 1]
                if key not in folders:
                    folders[key] = await parent.add_folder(ua.NodeId("/".join(key), idx), name)
                parent = folders[key]
            var = await parent.add_variable(
                ua.NodeId(f"{machine}.{tag}", idx), tag, float(batch.value[i])
            )
            self.vars[ref.path] = var
            self.values[ref.path] = float(batch.value[i])
        self._stop = asyncio.Event()
        async with server:
            self._ready.set()
            while not self._stop.is_set():
                if self.update_ms > 0:
                    try:
                        await asyncio.wait_for(self._stop.wait(), self.update_ms / 1000)
                    except TimeoutError:
                        await self._publish()
                else:
                    await self._stop.wait()

    async def _publish(self) -> None:
        batch = self.site.step(1)
        for i, v in zip(batch.tag_idx.tolist(), batch.value.tolist(), strict=True):
            path = batch.tags[i].path
            self.values[path] = v
            await self.vars[path].write_value(float(v))

    def start(self) -> OpcUaSiteServer:
        """Start serving; returns once the endpoint is up."""
        self._ready.clear()
        self._thread = threading.Thread(
            target=lambda: self._loop.run_until_complete(self._main()),
            name="opcua-sim",
            daemon=True,
        )
        self._thread.start()
        if not self._ready.wait(30):
            msg = "OPC UA simulator did not start"
            raise SimulatorSetupError(msg)
        return self

    def stop(self) -> None:
        """Stop serving (the site keeps its state, so start() resumes it)."""
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(30)
        self._loop = asyncio.new_event_loop()


def main(argv: list[str] | None = None) -> int:
    """Serve until interrupted."""
    p = argparse.ArgumentParser(prog="edgeflow sim opcua", description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=4840)
    a = p.parse_args(argv)
    srv = OpcUaSiteServer(EnergySite(start_ms=now_ms() - now_ms() % 1000), port=a.port).start()
    print(f"OPC UA simulator at {srv.url}; Ctrl-C to stop")
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        srv.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
