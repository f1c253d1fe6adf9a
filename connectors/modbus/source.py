"""Modbus TCP / RTU-over-TCP polling input (pymodbus), one I/O thread per device.

Each configured device is a partition of its own with its own thread and TCP connection, so a
switched-off device, a unit id that never answers or a slow gateway delays only that device's
data. Polls follow an absolute schedule (``interval_ms``); a poll that overruns skips the slots
it missed instead of piling up. A poll reads the register map in coalesced requests
(:func:`wire.modbus.plan_reads`); a request the device refuses (illegal address, function or
value) is split in halves down to the offending register, which is then left out of the
coalesced requests and retried alone every ``retry_refused_s``. Repeated problems (a refused
register, an undecodable value, a device failure code) are one dead letter per episode, with
a count when it clears. Connection state changes are ``source`` events; reconnecting starts
immediately and backs off up to ``reconnect_max_s``.
"""

from __future__ import annotations

import collections
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from bytewax.inputs import FixedPartitionedSource
from pymodbus.client import ModbusTcpClient
from pymodbus.exceptions import ModbusException, ModbusIOException
from pymodbus.framer import FramerType
from typing_extensions import override

from connectors._io import Backoff, Channel, Episodes, Link, SourceItem, ThreadedPartition
from connectors.modbus.config import ModbusDeviceConfig, ModbusInput
from wire.modbus import ModbusDecodeError, ReadBlock, RegisterSpec, decode, plan_reads
from wire.records import DeadLetter, Isa95, PointBatch, TagRef, now_ms

__all__ = ["ModbusSource"]

log = logging.getLogger(__name__)

# Exception codes that say something about the requested registers: split the request.
_ADDRESS_CODES = {1, 2, 3}
# Gateway path unavailable / target failed to respond: the device behind it is down.
_GATEWAY_CODES = {10, 11}


class _Lost(Exception):
    """The connection or the device stopped answering."""


@dataclass
class _Stats:
    polls: int = 0
    missed: int = 0
    failures: int = 0


class _DevicePartition(ThreadedPartition[None]):
    def __init__(self, cfg: ModbusInput, dev: ModbusDeviceConfig, context: Isa95) -> None:
        name = f"{cfg.id}:{dev.device_id}"
        super().__init__(name, Channel(cfg.queue_size, cfg.overflow), batch_size=cfg.queue_size)
        self.cfg, self.dev = cfg, dev
        self.source = name
        self.tags = tuple(TagRef.of(context, s.tag, s.unit) for s in dev.registers)
        self._index = {s: i for i, s in enumerate(dev.registers)}
        self.refused: dict[RegisterSpec, float] = {}  # spec -> monotonic time of next retry
        self.blocks = plan_reads(dev.registers, max_gap=cfg.max_gap)
        self.episodes = Episodes("modbus", name)
        self.link = Link(
            cfg.id,
            f"{cfg.host}:{cfg.port} device {dev.device_id}",
            context.path,
            self._put,
        )
        self.stats = _Stats()
        self.lateness_ms: collections.deque[float] = collections.deque(maxlen=100_000)
        self.client: Any = None
        self.start()

    def _put(self, item: SourceItem | None) -> None:
        if item is not None:
            self.channel.put(item, stop=self.stopping)

    # -- connection --------------------------------------------------------------------
    def _connect(self) -> Any:
        if self.client is None:
            self.client = ModbusTcpClient(
                self.cfg.host,
                port=self.cfg.port,
                framer=FramerType.RTU if self.cfg.framer == "rtu" else FramerType.SOCKET,
                timeout=self.cfg.timeout_s,
                retries=0,
                reconnect_delay=0,
            )
        if not self.client.connected and not self.client.connect():
            msg = "connection refused or timed out"
            raise _Lost(msg)
        return self.client

    def _disconnect(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None

    # -- reading -----------------------------------------------------------------------
    def _read(self, client: Any, table: str, start: int, count: int) -> Any:
        kw = {"count": count, "device_id": self.dev.device_id}
        try:
            if table == "holding":
                resp = client.read_holding_registers(start, **kw)
            elif table == "input":
                resp = client.read_input_registers(start, **kw)
            elif table == "coil":
                resp = client.read_coils(start, **kw)
            else:
                resp = client.read_discrete_inputs(start, **kw)
        except ModbusIOException as e:
            msg = f"no response from device id {self.dev.device_id}: {e}"
            raise _Lost(msg) from None
        except (ConnectionError, OSError, ModbusException) as e:
            raise _Lost(str(e) or type(e).__name__) from None
        code = getattr(resp, "exception_code", 0) if resp.isError() else 0
        if code in _GATEWAY_CODES:
            msg = f"gateway: device id {self.dev.device_id} unreachable (exception {code})"
            raise _Lost(msg)
        return resp

    def _words(self, resp: Any, table: str) -> list[int]:
        return list(resp.bits if table in ("coil", "discrete") else resp.registers)

    def _read_block(
        self, client: Any, block: ReadBlock, out: list[tuple[int, float]]
    ) -> list[DeadLetter]:
        """Read one block into ``out`` (index, value); split it when the device refuses it."""
        resp = self._read(client, block.table, block.start, block.count)
        dead: list[DeadLetter] = []
        if not resp.isError():
            words = self._words(resp, block.table)
            for spec in block.specs:
                off = spec.address - block.start
                dead += self._decode(spec, words[off : off + spec.count], out)
            key = ("failure", block.table, block.start, block.count)
            dead += [d for d in [self.episodes.clear(key)] if d]
            return dead
        code = getattr(resp, "exception_code", 0)
        if code not in _ADDRESS_CODES:
            key = ("failure", block.table, block.start, block.count)
            reason = (
                f"device {self.dev.device_id} failed {block.table} {block.start}+{block.count}: "
                f"exception {code}"
            )
            payload = {"device_id": self.dev.device_id, "tags": [s.tag for s in block.specs]}
            return [d for d in [self.episodes.seen(key, reason, payload)] if d]
        if len(block.specs) == 1:
            spec = block.specs[0]
            self.refused[spec] = time.monotonic() + self.cfg.retry_refused_s
            reason = (
                f"device {self.dev.device_id} refused {spec.table} {spec.address}+{spec.count} "
                f"({spec.tag}): exception {code}"
            )
            payload = {
                "device_id": self.dev.device_id,
                "tag": spec.tag,
                "table": spec.table,
                "address": spec.address,
                "exception": code,
            }
            seen = self.episodes.seen(("refused", spec), reason, payload)
            return [seen] if seen else []
        # Split the refused request so only the bad register fails; its neighbours are read.
        mid = len(block.specs) // 2
        for part in (block.specs[:mid], block.specs[mid:]):
            for sub in plan_reads(part, max_gap=self.cfg.max_gap):
                dead += self._read_block(client, sub, out)
        return dead

    def _decode(
        self, spec: RegisterSpec, regs: list[int], out: list[tuple[int, float]]
    ) -> list[DeadLetter]:
        key = ("decode", spec.tag)
        try:
            value = decode([int(r) for r in regs], spec)
        except ModbusDecodeError as e:
            payload = {"device_id": self.dev.device_id, "tag": spec.tag, "registers": regs}
            return [d for d in [self.episodes.seen(key, str(e), payload)] if d]
        out.append((self._index[spec], value))
        return [d for d in [self.episodes.clear(key)] if d]

    def _poll(self, client: Any) -> tuple[list[tuple[int, float]], list[DeadLetter]]:
        out: list[tuple[int, float]] = []
        dead: list[DeadLetter] = []
        replan = False
        for block in self.blocks:
            before = len(self.refused)
            dead += self._read_block(client, block, out)
            replan |= len(self.refused) != before
        now = time.monotonic()
        for spec, due in list(self.refused.items()):
            if due > now:
                continue
            resp = self._read(client, spec.table, spec.address, spec.count)
            if resp.isError():
                self.refused[spec] = now + self.cfg.retry_refused_s
                self.episodes.seen(("refused", spec), "", {})
                continue
            del self.refused[spec]
            replan = True
            dead += [d for d in [self.episodes.clear(("refused", spec))] if d]
            dead += self._decode(spec, self._words(resp, spec.table), out)
        if replan:
            good = tuple(s for s in self.dev.registers if s not in self.refused)
            self.blocks = plan_reads(good, max_gap=self.cfg.max_gap)
        return out, dead

    # -- the thread --------------------------------------------------------------------
    @override
    def run(self) -> None:
        interval = self.dev.interval_ms / 1000
        backoff = Backoff(max_s=self.cfg.reconnect_max_s)
        next_t = time.monotonic()
        try:
            while not self.wait(next_t - time.monotonic()):
                scheduled = next_t
                started = time.monotonic()
                ts = now_ms()
                try:
                    values, dead = self._poll(self._connect())
                except _Lost as e:
                    self.stats.failures += 1
                    self.link.down(str(e))
                    self._disconnect()
                    next_t = time.monotonic() + backoff.next_delay()
                    continue
                self.link.up()
                backoff.reset()
                self.lateness_ms.append((started - scheduled) * 1000)
                self.stats.polls += 1
                if values:
                    idx, vals = zip(*values, strict=True)
                    n = len(idx)
                    self._put(
                        PointBatch(
                            self.tags,
                            np.asarray(idx, np.int32),
                            np.full(n, ts, np.int64),
                            np.asarray(vals, np.float64),
                            np.zeros(n, np.uint8),
                            source=self.source,
                            received_ms=ts,
                        )
                    )
                for d in dead:
                    self._put(d)
                if self.cfg.max_polls is not None and self.stats.polls >= self.cfg.max_polls:
                    break
                next_t = scheduled + interval
                now = time.monotonic()
                if next_t < now:  # overran: skip the slots already missed
                    skipped = int((now - next_t) // interval) + 1
                    self.stats.missed += skipped
                    next_t += skipped * interval
        finally:
            self._disconnect()

    @override
    def interrupt(self) -> None:
        client = self.client
        if client is not None:
            client.close()  # a read blocked on a silent device fails at once

    @override
    def snapshot(self) -> None:
        return None


@dataclass(frozen=True)
class ModbusSource(FixedPartitionedSource[SourceItem, None]):
    """Poll every configured device in its own thread; one Bytewax partition per device."""

    cfg: ModbusInput
    enterprise: str
    site: str

    @override
    def list_parts(self) -> list[str]:
        return [f"{self.cfg.id}:{d.device_id}" for d in self.cfg.devices]

    @override
    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _DevicePartition:
        device_id = int(for_part.rsplit(":", 1)[1])
        dev = next(d for d in self.cfg.devices if d.device_id == device_id)
        context = Isa95(self.enterprise, self.site, dev.area, dev.line, dev.machine)
        return _DevicePartition(self.cfg, dev, context)
