"""Registers the Modbus input: one polling source per device."""

from __future__ import annotations

from connectors.modbus.config import ModbusInput
from connectors.modbus.source import ModbusDeviceSource
from flows.build import Build
from flows.registry import register
from wire.records import Isa95

__all__ = ["build"]


@register(
    "input",
    "modbus",
    ModbusInput,
    emits=("raw", "dead_letters", "events"),
    sample="sample.yaml",
)
def build(cfg: ModbusInput, b: Build) -> None:
    """Poll each device on its own interval."""
    ent, st = b.site.site.enterprise, b.site.site.site
    for dev in cfg.devices:
        b.input(
            f"{cfg.id}_{dev.device_id}",
            ModbusDeviceSource(
                cfg.host,
                cfg.port,
                dev.device_id,
                Isa95(ent, st, dev.area, dev.line, dev.machine),
                dev.registers,
                interval_ms=dev.interval_ms,
                framer=cfg.framer,
                timeout_s=cfg.timeout_s,
                max_gap=cfg.max_gap,
                max_polls=cfg.max_polls,
                source=f"{cfg.id}:{dev.device_id}",
            ),
            lists=True,
        )
