"""Modbus TCP / RTU-over-TCP polling source (pymodbus).

One :class:`ModbusDeviceSource` per device (its own interval). Each poll reads the device's
register map in coalesced requests (see :func:`connectors.modbus_codec.plan_reads`) and emits
one :class:`PointBatch` of every readable tag, plus a :class:`DeadLetter` for each request the
device refused (e.g. illegal address) or value that would not decode, with the raw registers.
Connection failures raise ``SimplePollingSource.Retry`` with exponential backoff, so a device
that is down delays only its own polls and never blocks the worker in a sleep.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal

import numpy as np
from bytewax.inputs import SimplePollingSource
from pymodbus.client import ModbusTcpClient
from pymodbus.exceptions import ModbusException
from pymodbus.framer import FramerType
from typing_extensions import override

from flows.lifecycle import stop_requested
from wire.modbus import ModbusDecodeError, RegisterSpec, decode, plan_reads
from wire.records import DeadLetter, Isa95, PointBatch, TagRef, now_ms

__all__ = ["ModbusDeviceSource"]

log = logging.getLogger(__name__)


@dataclass
class ModbusDeviceSource(SimplePollingSource[list[PointBatch | DeadLetter], None]):
    """Poll one Modbus device every ``interval_ms``."""

    host: str
    port: int
    device_id: int
    context: Isa95
    registers: tuple[RegisterSpec, ...]
    interval_ms: int = 1000
    framer: Literal["tcp", "rtu"] = "tcp"
    timeout_s: float = 2.0
    max_gap: int = 8
    max_polls: int | None = None
    source: str = "modbus"
    _client: Any = field(default=None, init=False, repr=False)
    _failures: int = field(default=0, init=False, repr=False)
    _polls: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        super().__init__(timedelta(milliseconds=self.interval_ms))
        self.blocks = plan_reads(self.registers, max_gap=self.max_gap)
        self.tags = tuple(TagRef.of(self.context, s.tag, s.unit) for s in self.registers)
        self._index = {s: i for i, s in enumerate(self.registers)}

    def _connect(self) -> Any:
        if self._client is None:
            self._client = ModbusTcpClient(
                self.host,
                port=self.port,
                framer=FramerType.RTU if self.framer == "rtu" else FramerType.SOCKET,
                timeout=self.timeout_s,
                retries=0,
                reconnect_delay=0,
            )
        if not self._client.connected and not self._client.connect():
            msg = f"cannot connect to {self.host}:{self.port}"
            raise ConnectionError(msg)
        return self._client

    def _retry(self, why: str) -> SimplePollingSource.Retry:
        self._failures += 1
        backoff_s = min(30.0, 0.5 * 2 ** min(self._failures, 6))
        log.warning(
            "%s device %d at %s:%d: %s; retrying in %.1f s",
            self.source,
            self.device_id,
            self.host,
            self.port,
            why,
            backoff_s,
        )
        if self._client is not None:
            self._client.close()
        return SimplePollingSource.Retry(timedelta(seconds=backoff_s))

    def _read(self, client: Any, block: Any) -> Any:
        kw = {"count": block.count, "device_id": self.device_id}
        if block.table == "holding":
            return client.read_holding_registers(block.start, **kw)
        if block.table == "input":
            return client.read_input_registers(block.start, **kw)
        if block.table == "coil":
            return client.read_coils(block.start, **kw)
        return client.read_discrete_inputs(block.start, **kw)

    @override
    def next_item(self) -> list[PointBatch | DeadLetter]:
        if stop_requested() or (self.max_polls is not None and self._polls >= self.max_polls):
            raise StopIteration
        try:
            client = self._connect()
        except (ConnectionError, OSError, ModbusException) as e:
            raise self._retry(str(e)) from None
        ts = now_ms()
        idx: list[int] = []
        values: list[float] = []
        dead: list[DeadLetter] = []
        for block in self.blocks:
            try:
                resp = self._read(client, block)
            except (ConnectionError, OSError, ModbusException) as e:
                why = f"read failed: {e}"
                raise self._retry(why) from None
            if resp.isError():
                reason = (
                    f"device {self.device_id} refused {block.table} {block.start}"
                    f"+{block.count}: {resp}"
                )
                dead.append(
                    DeadLetter(
                        "modbus", reason, {"tags": [s.tag for s in block.specs]}, source=self.source
                    )
                )
                continue
            words = list(resp.bits if block.table in ("coil", "discrete") else resp.registers)
            for spec in block.specs:
                off = spec.address - block.start
                regs = words[off : off + spec.count]
                try:
                    values.append(decode([int(r) for r in regs], spec))
                    idx.append(self._index[spec])
                except ModbusDecodeError as e:
                    dead.append(
                        DeadLetter(
                            "modbus",
                            str(e),
                            {"tag": spec.tag, "registers": regs},
                            source=self.source,
                        )
                    )
        self._failures = 0
        self._polls += 1
        n = len(idx)
        batch = PointBatch(
            self.tags,
            np.asarray(idx, np.int32),
            np.full(n, ts, np.int64),
            np.asarray(values, np.float64),
            np.zeros(n, np.uint8),
            source=self.source,
            received_ms=ts,
        )
        return [batch, *dead]
