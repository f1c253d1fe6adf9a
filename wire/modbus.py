"""Modbus register maps: data types, byte/word order, scaling, and read coalescing (pure).

Byte order names follow the usual PLC convention for a 32-bit value whose big-endian bytes are
``A B C D``: ``ABCD`` (big endian), ``CDAB`` (word swap), ``BADC`` (byte swap within each
register), ``DCBA`` (little endian). For 64-bit values the same rule applies register-wise:
word swap reverses the register order, byte swap swaps the two bytes of every register.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Literal

from pydantic import ConfigDict

from wire.errors import CodecError

__all__ = [
    "DTYPES",
    "ModbusDecodeError",
    "ReadBlock",
    "RegisterSpec",
    "decode",
    "encode",
    "plan_reads",
]

Table = Literal["holding", "input", "coil", "discrete"]
DType = Literal["int16", "uint16", "int32", "uint32", "float32", "float64", "bool"]
Order = Literal["ABCD", "CDAB", "BADC", "DCBA"]

DTYPES: dict[str, tuple[int, str]] = {  # registers, struct format (big endian)
    "int16": (1, ">h"),
    "uint16": (1, ">H"),
    "int32": (2, ">i"),
    "uint32": (2, ">I"),
    "float32": (2, ">f"),
    "float64": (4, ">d"),
    "bool": (1, ">H"),
}


class ModbusDecodeError(CodecError):
    """Registers cannot be decoded as the configured type."""


@dataclass(frozen=True, slots=True)
class RegisterSpec:
    """One tag: where it lives and how to read it; value = raw * scale + offset."""

    __pydantic_config__ = ConfigDict(extra="forbid")

    tag: str
    address: int
    table: Table = "holding"
    dtype: DType = "uint16"
    order: Order = "ABCD"
    scale: float = 1.0
    offset: float = 0.0
    unit: str = ""

    def __post_init__(self) -> None:
        if not self.tag or "/" in self.tag:
            msg = f"tag must be non-empty and contain no '/', got {self.tag!r}"
            raise ValueError(msg)
        if not 0 <= self.address <= 65535:
            msg = f"address must be 0..65535, got {self.address}"
            raise ValueError(msg)
        if self.scale == 0:
            msg = f"{self.tag}: scale must not be 0"
            raise ValueError(msg)

    @property
    def count(self) -> int:
        """Number of registers (or coils) the value spans."""
        return 1 if self.table in ("coil", "discrete") else DTYPES[self.dtype][0]


def _reorder(regs: list[int], order: str) -> list[int]:
    if order in ("CDAB", "DCBA"):
        regs = regs[::-1]
    if order in ("BADC", "DCBA"):
        regs = [((r & 0xFF) << 8) | (r >> 8) for r in regs]
    return regs


def decode(regs: list[int], spec: RegisterSpec) -> float:
    """Decode the registers of one value (already sliced) to a scaled float."""
    if spec.table in ("coil", "discrete") or spec.dtype == "bool":
        return float(bool(regs[0]))
    n, fmt = DTYPES[spec.dtype]
    if len(regs) != n or any(not 0 <= r <= 0xFFFF for r in regs):
        msg = f"{spec.tag}: expected {n} 16-bit registers, got {regs}"
        raise ModbusDecodeError(msg)
    data = b"".join(r.to_bytes(2, "big") for r in _reorder(list(regs), spec.order))
    (raw,) = struct.unpack(fmt, data)
    value = float(raw)
    if not math.isfinite(value):
        msg = f"{spec.tag}: registers {regs} decode to {value} ({spec.dtype} {spec.order})"
        raise ModbusDecodeError(msg)
    return value * spec.scale + spec.offset


def encode(value: float, spec: RegisterSpec) -> list[int]:
    """Inverse of :func:`decode` (used by the simulator server and tests)."""
    if spec.table in ("coil", "discrete") or spec.dtype == "bool":
        return [int(bool(value))]
    n, fmt = DTYPES[spec.dtype]
    raw = (value - spec.offset) / spec.scale
    if spec.dtype.startswith(("int", "uint")):
        raw = round(raw)
    data = struct.pack(fmt, raw)
    regs = [int.from_bytes(data[i : i + 2], "big") for i in range(0, 2 * n, 2)]
    # _reorder is its own inverse for every order.
    return _reorder(regs, spec.order)


@dataclass(frozen=True, slots=True)
class ReadBlock:
    """One request: ``count`` registers from ``start`` in ``table``, serving ``specs``."""

    table: Table
    start: int
    count: int
    specs: tuple[RegisterSpec, ...]


def plan_reads(
    specs: tuple[RegisterSpec, ...], *, max_gap: int = 8, max_registers: int = 125
) -> list[ReadBlock]:
    """Coalesce adjacent (or nearly adjacent) registers of a table into few requests.

    Registers up to ``max_gap`` apart share a request; a request never exceeds
    ``max_registers`` (125 registers / 2000 coils is the Modbus limit).
    """
    blocks: list[ReadBlock] = []
    for table in ("holding", "input", "coil", "discrete"):
        mine = sorted((s for s in specs if s.table == table), key=lambda s: s.address)
        limit = 2000 if table in ("coil", "discrete") else max_registers
        cur: list[RegisterSpec] = []
        start = end = 0
        for s in mine:
            if cur and s.address <= end + max_gap and s.address + s.count - start <= limit:
                cur.append(s)
                end = max(end, s.address + s.count)
                continue
            if cur:
                blocks.append(ReadBlock(table, start, end - start, tuple(cur)))
            cur, start, end = [s], s.address, s.address + s.count
        if cur:
            blocks.append(ReadBlock(table, start, end - start, tuple(cur)))
    return blocks
