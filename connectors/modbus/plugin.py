"""Registers the Modbus input: one partition (and I/O thread) per device."""

from __future__ import annotations

from connectors.modbus.config import ModbusInput
from connectors.modbus.source import ModbusSource
from flows.build import Build
from flows.registry import register

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
    b.input(cfg.id, ModbusSource(cfg, b.site.site.enterprise, b.site.site.site))
