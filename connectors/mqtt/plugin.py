"""Registers the MQTT input and the MQTT output sink."""

from __future__ import annotations

from functools import partial

from connectors._spool_options import spool_home
from connectors._spooled import spooled_output
from connectors.mqtt.config import MqttInput
from connectors.mqtt.output import MqttSinkConfig, spooled
from connectors.mqtt.source import MqttSource
from flows.build import Build
from flows.registry import register

__all__ = ["build", "build_output"]


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


@register(
    "sink",
    "mqtt",
    MqttSinkConfig,
    emits=("dead_letters", "events"),
    sample="output_sample.yaml",
)
def build_output(cfg: MqttSinkConfig, b: Build) -> None:
    """Spool the subscribed streams' rows; a thread publishes them to the broker."""
    rows = b.tagged_rows(cfg.streams, cfg.id)
    if rows is None:
        return
    home, path = spool_home(b.site, cfg)
    spooled_output(b, cfg.id, rows, partial(spooled, cfg, home / cfg.client_id, path))
