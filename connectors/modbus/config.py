"""Configuration of the Modbus input."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from flows.registry import InputModel
from wire.modbus import RegisterSpec
from wire.records import Isa95, TagRef

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
    """Modbus TCP (or RTU framing over TCP) polling of devices behind one address.

    Each device is polled by a thread and connection of its own. ``overflow`` names what
    happens when ``queue_size`` polls wait for the flow: ``drop_oldest`` (default: stale
    readings make way for fresh ones), ``drop_newest`` or ``block`` (the device waits).
    """

    type: Literal["modbus"]
    id: str = "modbus"
    host: str
    port: int = Field(default=502, gt=0, le=65535)
    framer: Literal["tcp", "rtu"] = "tcp"
    timeout_s: float = Field(default=2.0, gt=0)
    max_gap: int = Field(default=8, ge=0, description="coalesce registers this close")
    max_polls: int | None = Field(default=None, gt=0, description="stop after N polls (tests)")
    reconnect_max_s: float = Field(
        default=2.0, gt=0, description="longest wait between reconnect attempts"
    )
    retry_refused_s: float = Field(
        default=30.0, gt=0, description="how often a register the device refused is tried again"
    )
    queue_size: int = Field(default=1000, gt=0, description="polls waiting for the flow")
    overflow: Literal["block", "drop_oldest", "drop_newest"] = "drop_oldest"
    devices: tuple[ModbusDeviceConfig, ...] = Field(min_length=1)

    def sampled_tags(self, enterprise: str, site: str) -> dict[TagRef, int]:
        """Every register's tag, polled every ``interval_ms`` of its device."""
        return {
            TagRef.of(Isa95(enterprise, site, d.area, d.line, d.machine), r.tag, r.unit): (
                d.interval_ms
            )
            for d in self.devices
            for r in d.registers
        }

    @field_validator("devices")
    @classmethod
    def _unique(cls, v: tuple[ModbusDeviceConfig, ...]) -> tuple[ModbusDeviceConfig, ...]:
        ids = [d.device_id for d in v]
        if len(set(ids)) != len(ids):
            msg = f"device ids must be unique on one address, got {ids}"
            raise ValueError(msg)
        return v
