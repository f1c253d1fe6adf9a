"""Registers the built-in simulator input and the ``edgeflow sim`` command."""

from __future__ import annotations

import importlib

from flows.build import Build
from flows.registry import register, register_command
from simulators.config import SimulatorInput
from simulators.site import EnergySite
from simulators.source import SimulatorSource

__all__ = ["build", "sim_main"]


@register("input", "simulator", SimulatorInput, emits=("raw",), sample="sample.yaml")
def build(cfg: SimulatorInput, b: Build) -> None:
    """Simulate the site named in the site file."""
    ident = b.site.site
    layout = cfg.layout(ident.enterprise, ident.site)
    # Fail now, not when the flow starts: faults must name assets of the simulated site.
    EnergySite(layout=layout, start_ms=0, interval_ms=cfg.interval_ms, faults=cfg.faults)
    b.input(cfg.id, SimulatorSource(cfg, layout))


_SIMULATORS = {
    "history": "simulators.history",
    "opcua": "simulators.opcua_server",
    "modbus": "simulators.modbus_server",
    "mqtt": "simulators.mqtt_publisher",
}


def sim_main(argv: list[str]) -> int:
    """``edgeflow sim opcua|modbus|mqtt [options]``: serve the demo site over a protocol."""
    if not argv or argv[0] not in _SIMULATORS:
        print(f"usage: edgeflow sim {{{'|'.join(_SIMULATORS)}}} [options] (--help for each)")
        return 2
    main = importlib.import_module(_SIMULATORS[argv[0]]).main
    return int(main(argv[1:]) or 0)


register_command("sim", sim_main, "serve the demo site over OPC UA, Modbus or MQTT")
