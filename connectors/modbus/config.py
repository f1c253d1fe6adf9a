"""Configuration of the Modbus input."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from flows.registry import InputModel
from wire.modbus import RegisterSpec

__all__ = ["ModbusDeviceConfig", "ModbusInput"]


class ModbusDeviceConfig(BaseModel):
    """A device on the Modbus link: its id, ISA-95 place, poll interval and registers."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    device_id: int = Field(ge=0, le=255)
    area: str = Field(min_length=1, pattern=r"^[^/\s]+$")
    line: str = Field(min_length=1, pattern=r"^[^/\s]+$")
    machine: str = Field(min_length=1, pattern=r"^[^/\s]+$")
    interval_ms: int = Field(default=1000, gt=0)
    registers: tuple[RegisterSpec, ...] = Field(min_length=1)


class ModbusInput(InputModel):
    """Modbus TCP (or RTU framing over TCP) polling of one or more devices behind one address."""

    type: Literal["modbus"]
    id: str = "modbus"
    host: str
    port: int = Field(default=502, gt=0, le=65535)
    framer: Literal["tcp", "rtu"] = "tcp"
    timeout_s: float = Field(default=2.0, gt=0)
    max_gap: int = Field(default=8, ge=0, description="coalesce registers this close")
    max_polls: int | None = Field(default=None, gt=0, description="stop after N polls (tests)")
    devices: tuple[ModbusDeviceConfig, ...] = Field(min_length=1)
