"""Registers the OPC UA input and the ``edgeflow certs`` command."""

from __future__ import annotations

from connectors.opcua.certs import main as certs_main
from connectors.opcua.config import OpcUaInput
from connectors.opcua.source import OpcUaSource
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
    b.input(cfg.id, OpcUaSource(cfg, b.site.site.enterprise, b.site.site.site))


register_command("certs", certs_main, "create an OPC UA client certificate and key")
