"""Serve the simulated energy site over real Modbus TCP (or RTU framing over TCP).

Each asset is a device id with a register map that mixes the data types and byte orders met
on real plants (word-swapped float32 power, scaled int16 temperatures, signed int32 battery
power, float64 battery voltage, coils for run state). ``edgeflow sim modbus
--port 5020`` serves it until Ctrl-C; tests start it in-process with :class:`ModbusSiteServer`.
"""

from __future__ import annotations

import argparse
import asyncio
import threading
from dataclasses import dataclass
from functools import partial
from typing import Any

from pymodbus.framer import FramerType
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from simulators.errors import SimulatorSetupError
from simulators.site import EnergySite
from wire.modbus import RegisterSpec, encode
from wire.records import now_ms

__all__ = ["DeviceMap", "ModbusSiteServer", "site_register_map"]

_FC = {"holding": 3, "input": 4, "coil": 1, "discrete": 2}
_SIZE = 64


@dataclass(frozen=True)
class DeviceMap:
    """One Modbus device: the asset it represents and its registers."""

    device_id: int
    area: str
    line: str
    machine: str
    registers: tuple[RegisterSpec, ...]


def _inverter(device_id: int, n: int) -> DeviceMap:
    r = RegisterSpec
    return DeviceMap(
        device_id,
        "pv",
        f"array-{n}",
        f"inv-{n:02d}",
        (
            r("ac_power", 0, dtype="float32", order="CDAB", unit="kW"),
            r("dc_power", 2, dtype="float32", order="ABCD", unit="kW"),
            r("efficiency", 4, dtype="uint16", scale=0.01, unit="%"),
            r("temperature", 5, dtype="int16", scale=0.1, unit="C"),
            r("dc_voltage", 6, dtype="uint32", order="BADC", scale=0.01, unit="V"),
            r("string1_current", 10, dtype="float32", order="DCBA", unit="A"),
            r("string2_current", 12, dtype="float32", order="DCBA", unit="A"),
            r("string3_current", 14, dtype="float32", order="DCBA", unit="A"),
            r("string4_current", 16, dtype="float32", order="DCBA", unit="A"),
            r("running", 0, table="coil", dtype="bool"),
        ),
    )


def site_register_map(inverters: int = 2) -> tuple[DeviceMap, ...]:
    """Return the register map the simulator serves (and a Modbus site config reads)."""
    r = RegisterSpec
    return (
        *(_inverter(i + 1, i + 1) for i in range(inverters)),
        DeviceMap(
            10,
            "storage",
            "bess",
            "bess-01",
            (
                r("soc", 0, table="input", dtype="uint16", scale=0.01, unit="%"),
                r("power", 0, dtype="int32", scale=0.001, unit="kW"),
                r("voltage", 20, dtype="float64", unit="V"),
                r("temperature", 24, dtype="int16", scale=0.1, unit="C"),
            ),
        ),
        DeviceMap(
            20,
            "grid",
            "poc",
            "meter-01",
            (
                r("active_power", 0, dtype="float32", order="CDAB", unit="kW"),
                r("voltage", 2, dtype="float32", order="CDAB", unit="V"),
                r("frequency", 4, dtype="uint16", scale=0.01, unit="Hz"),
                r("power_factor", 5, dtype="int16", scale=0.001),
                r("breaker_closed", 0, table="discrete", dtype="bool"),
            ),
        ),
        DeviceMap(
            30,
            "load",
            "lv-panel",
            "panel-01",
            (r("active_power", 0, dtype="float32", order="CDAB", unit="kW"),),
        ),
        DeviceMap(
            40,
            "weather",
            "met",
            "met-01",
            (
                r("irradiance", 0, dtype="float32", unit="W/m2"),
                r("ambient_temperature", 2, dtype="int16", scale=0.1, unit="C"),
            ),
        ),
    )


class ModbusSiteServer:
    """Runs a Modbus server in a background thread, updated from an :class:`EnergySite`."""

    def __init__(
        self,
        site: EnergySite,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        framer: str = "tcp",
        update_ms: int = 1000,
    ) -> None:
        self.site = site
        self.maps = site_register_map(site.layout.inverters)
        self.host, self.port, self.framer, self.update_ms = host, port, framer, update_ms
        # Register images per (device, function code); the access action copies them into
        # pymodbus's blocks, so every read sees the latest simulated values.
        self.images: dict[tuple[int, int], list[int]] = {
            (m.device_id, fc): [0] * _SIZE for m in self.maps for fc in (1, 2, 3, 4)
        }
        self.devices = [
            SimDevice(
                m.device_id,
                simdata=(
                    [SimData(0, count=_SIZE, datatype=DataType.BITS)],
                    [SimData(0, count=_SIZE, datatype=DataType.BITS)],
                    [SimData(0, count=_SIZE, datatype=DataType.REGISTERS)],
                    [SimData(0, count=_SIZE, datatype=DataType.REGISTERS)],
                ),
                action=partial(self._action, m.device_id),
            )
            for m in self.maps
        ]
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="modbus-sim", daemon=True)
        self._ready = threading.Event()
        self._server: ModbusTcpServer | None = None
        self.values: dict[str, float] = {}
        self.update()

    def update(self) -> None:
        """Advance the site one tick and publish the values to the registers."""
        batch = self.site.step(1)
        latest = {
            t.path: float(v)
            for t, v in zip(
                (batch.tags[i] for i in batch.tag_idx.tolist()), batch.value.tolist(), strict=True
            )
        }
        prefix = f"{self.site.layout.enterprise}/{self.site.layout.site}"
        for m in self.maps:
            for spec in m.registers:
                path = f"{prefix}/{m.area}/{m.line}/{m.machine}/{spec.tag}"
                if spec.tag == "running":
                    value = float(
                        latest.get(f"{prefix}/{m.area}/{m.line}/{m.machine}/ac_power", 0) > 0
                    )
                elif spec.tag == "breaker_closed":
                    value = 1.0
                else:
                    value = latest[path]
                self.values[path] = value
                regs = encode(value, spec)
                image = self.images[(m.device_id, _FC[spec.table])]
                image[spec.address : spec.address + len(regs)] = regs

    async def _action(
        self,
        device_id: int,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        current_registers: list[int],
        set_values: Any,
    ) -> None:
        image = self.images.get((device_id, function_code))
        if image is not None:
            n = min(len(current_registers), _SIZE - start_address)
            current_registers[:n] = image[start_address : start_address + n]

    async def _serve(self) -> None:
        self._server = ModbusTcpServer(
            self.devices,
            address=(self.host, self.port),
            framer=FramerType.RTU if self.framer == "rtu" else FramerType.SOCKET,
        )
        await self._server.listen()
        sock = self._server.transport.sockets[0] if self._server.transport else None  # type: ignore[union-attr,attr-defined]
        if sock is not None:
            self.port = sock.getsockname()[1]
        self._ready.set()

        async def ticker() -> None:
            while True:
                await asyncio.sleep(self.update_ms / 1000)
                self.update()

        if self.update_ms > 0:
            self._loop.create_task(ticker())
        self._stopped = asyncio.Event()
        await self._stopped.wait()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())

    def start(self) -> ModbusSiteServer:
        """Start serving; returns once the port is open."""
        self._thread.start()
        if not self._ready.wait(10):
            msg = "modbus simulator did not start"
            raise SimulatorSetupError(msg)
        return self

    def stop(self) -> None:
        """Stop serving."""
        if self._server is not None:
            stop = self._server.shutdown()  # type: ignore[no-untyped-call]
            asyncio.run_coroutine_threadsafe(stop, self._loop).result(10)
            self._loop.call_soon_threadsafe(self._stopped.set)


def main(argv: list[str] | None = None) -> int:
    """Serve the demo site until interrupted."""
    p = argparse.ArgumentParser(prog="edgeflow sim modbus", description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5020)
    p.add_argument("--framer", choices=["tcp", "rtu"], default="tcp")
    a = p.parse_args(argv)
    site = EnergySite(start_ms=now_ms() - now_ms() % 1000)
    server = ModbusSiteServer(site, host=a.host, port=a.port, framer=a.framer).start()
    print(f"modbus simulator on {a.host}:{server.port} ({a.framer}); Ctrl-C to stop")
    try:
        server._thread.join()
    except KeyboardInterrupt:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
