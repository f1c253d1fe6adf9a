"""Registers the OPC UA input and the ``edgeflow certs`` command."""

from __future__ import annotations

from connectors.opcua.config import OpcUaInput
from flows.build import Build
from flows.registry import register, register_command

__all__ = ["build"]


@register(
    "input",
    "opcua",
    OpcUaInput,
    emits=("raw", "texts", "dead_letters", "events"),
    sample="sample.yaml",
)
def build(cfg: OpcUaInput, b: Build) -> None:
    """Subscribe to (or poll) the configured and browsed variables."""
    # asyncua (and cryptography) only in flows that use OPC UA: 32 MB resident otherwise,
    # a tenth of a backtest's memory goal. Built before any client thread starts.
    from connectors.opcua.source import OpcUaSource

    b.input(cfg.id, OpcUaSource(cfg, b.site.site.enterprise, b.site.site.site))


def _certs(argv: list[str]) -> int:
    from connectors.opcua.certs import main

    return main(argv)


register_command("certs", _certs, "create an OPC UA client certificate and key")
