"""Registers the MQTT input."""

from __future__ import annotations

from connectors._spool_options import spool_home
from connectors.mqtt.config import MqttInput
from connectors.mqtt.source import MqttSource
from flows.build import Build
from flows.registry import register

__all__ = ["build"]


@register(
    "input",
    "mqtt",
    MqttInput,
    emits=("raw", "texts", "dead_letters", "events"),
    sample="sample.yaml",
)
def build(cfg: MqttInput, b: Build) -> None:
    """Subscribe to the configured topics and Sparkplug groups."""
    home, _ = spool_home(b.site, cfg)
    b.input(cfg.id, MqttSource(cfg, b.site.site.enterprise, b.site.site.site, home))
