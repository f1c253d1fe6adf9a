"""MQTT output: the flow's results published back to the plant's broker, for local screens.

Each row of the subscribed streams (aggregates, events, KPIs, points) is one message: JSON,
the row as the stream documents it (``flows.streams``), on a topic built from the row's
ISA-95 context by ``topic`` (default
``{enterprise}/{site}/{area}/{line}/{machine}/_edgeflow/{stream}/{tag}``). Levels a row does
not have (a site KPI has no area) are ``_``; ``{tag}`` is a KPI's name for KPI rows and the
rule for events without a tag. QoS 1 by default; ``retain`` keeps the last message of each
topic on the broker, so a screen that connects later shows the current values at once.

Like the database sinks the rows are spooled first and a thread publishes them
(:mod:`connectors._spooled`): a broker that is away only makes the spool grow, a batch is
acknowledged once every message of it is (QoS 1 PUBACK), and the flow never waits. The broker
is the plant's own: publishing does not depend on the Kafka uplink.
"""

from __future__ import annotations

import json
import logging
import math
import re
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import paho.mqtt.client as mqtt
from pydantic import Field, field_validator
from typing_extensions import override

from connectors._spool import Spool
from connectors._spool_options import SpoolOptions
from connectors._spooled import Outage, Report, Spooled, SpoolSettings, Writer
from connectors.mqtt.config import MqttConnection
from flows.logs import reveal
from flows.registry import SinkModel

__all__ = ["MqttDelivery", "MqttSinkConfig", "spooled", "topic_for"]

log = logging.getLogger(__name__)

_LEVELS = ("enterprise", "site", "area", "line", "machine")
_FIELDS = (*_LEVELS, "tag", "stream")


class MqttSinkConfig(SinkModel, MqttConnection, SpoolOptions):
    """Publish rows to an MQTT broker on topics built from their ISA-95 context."""

    type: Literal["mqtt"]
    id: str = "mqtt-out"
    client_id: str = "edgeflow-out"
    qos: Literal[0, 1] = 1
    retain: bool = False
    topic: str = "{enterprise}/{site}/{area}/{line}/{machine}/_edgeflow/{stream}/{tag}"
    streams: tuple[Literal["raw", "points", "aggregates", "events", "kpis"], ...] = (
        "aggregates",
        "events",
        "kpis",
    )
    timeout_s: float = Field(default=10.0, gt=0, description="wait this long for a batch's acks")
    connect_timeout_s: float = Field(default=5.0, gt=0)

    @field_validator("topic")
    @classmethod
    def _fields(cls, v: str) -> str:
        unknown = sorted(set(re.findall(r"\{(\w+)\}", v)) - set(_FIELDS))
        if unknown or "+" in v or "#" in v or "{tag}" not in v:
            msg = (
                f"topic {v!r} must contain {{tag}}, may use "
                f"{', '.join('{' + f + '}' for f in _FIELDS)} and no wildcards; "
                f"unknown: {unknown}"
            )
            raise ValueError(msg)
        return v


def topic_for(template: str, stream: str, row: dict[str, Any]) -> str:
    """Return the topic of ``row`` of ``stream`` under ``template``."""
    parts = str(row.get("path", "")).split("/")
    levels = dict(zip(_LEVELS, parts[: len(_LEVELS)], strict=False))
    if stream == "kpis":
        tag = str(row.get("name", "_"))
    elif len(parts) > len(_LEVELS):
        tag = parts[-1]
    else:
        tag = str(row.get("rule", "_"))
    fields = {**dict.fromkeys(_LEVELS, "_"), **levels, "tag": tag, "stream": stream}
    # Topic levels must not hold MQTT wildcards or separators taken from data.
    safe = {k: re.sub(r"[/+#]", "_", v) or "_" for k, v in fields.items()}
    return template.format(**safe)


class MqttDelivery(Writer):
    """Publishes spooled rows; a batch is done when the broker acknowledged all of it."""

    def __init__(
        self, cfg: MqttSinkConfig, spool: Spool, report: Callable[[Report], None], path: str
    ) -> None:
        super().__init__(
            spool, report, name=cfg.id, endpoint=f"mqtt://{cfg.host}:{cfg.port}", path=path
        )
        self.cfg = cfg
        self.client: mqtt.Client | None = None
        self.connected = threading.Event()
        self.why = ""

    def _connect(self) -> mqtt.Client:
        if self.client is not None and self.connected.is_set():
            return self.client
        cfg = self.cfg
        if self.client is None:
            c = mqtt.Client(
                mqtt.CallbackAPIVersion.VERSION2,  # type: ignore[attr-defined]
                client_id=cfg.client_id,
                clean_session=True,
            )
            if cfg.username:
                c.username_pw_set(cfg.username, reveal(cfg.password) if cfg.password else None)
            if cfg.tls_ca:
                c.tls_set(ca_certs=cfg.tls_ca, cert_reqs=ssl.CERT_REQUIRED)
            c.max_inflight_messages_set(1000)
            c.max_queued_messages_set(0)
            c.on_connect = self._on_connect
            c.on_disconnect = self._on_disconnect
            self.client = c
            try:
                c.connect(cfg.host, cfg.port, keepalive=30)
            except OSError as e:
                self.client = None
                msg = f"cannot connect: {e}"
                raise Outage(msg) from e
            c.loop_start()
        if not self.connected.wait(cfg.connect_timeout_s):
            why = self.why or f"no CONNACK within {cfg.connect_timeout_s:g} s"
            self.disconnect()
            raise Outage(why)
        return self.client

    def _on_connect(self, _c: Any, _u: Any, _f: Any, reason: Any, _p: Any = None) -> None:
        if getattr(reason, "is_failure", False):
            self.why = f"broker refused the connection: {reason}"
            return
        self.why = ""
        self.connected.set()

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, reason: Any, _p: Any = None) -> None:
        self.connected.clear()
        self.why = f"disconnected: {reason}"

    @override
    def disconnect(self) -> None:
        c, self.client = self.client, None
        self.connected.clear()
        if c is not None:
            c.disconnect()
            c.loop_stop()

    @override
    def deliver(self, rows: list[tuple[str, dict[str, Any]]]) -> None:
        c = self._connect()
        cfg = self.cfg
        infos = []
        for stream, row in rows:
            payload = json.dumps(_nulls(row), default=str, allow_nan=False)
            info = c.publish(topic_for(cfg.topic, stream, row), payload, cfg.qos, cfg.retain)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                msg = f"publish failed: {mqtt.error_string(info.rc)}"
                raise Outage(msg)
            infos.append(info)
        deadline = time.monotonic() + cfg.timeout_s
        missing = f"acknowledgements missing after {cfg.timeout_s:g} s"
        for info in infos:
            left = deadline - time.monotonic()
            if left > 0 and self.connected.is_set():
                try:
                    info.wait_for_publish(left)
                except (RuntimeError, ValueError) as e:  # the client gave up on it
                    raise Outage(self.why or str(e)) from e
            if not info.is_published():
                raise Outage(self.why or missing)


def _nulls(row: dict[str, Any]) -> dict[str, Any]:
    """JSON has no NaN: a missing figure (no energy for a temperature) is null."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}


def spooled(
    cfg: MqttSinkConfig, spool_dir: Path, path: str = "", resume: dict[str, int] | None = None
) -> Spooled:
    """Build the spooled sink step's logic."""

    def make(spool: Spool, report: Callable[[Report], None]) -> Writer:
        return MqttDelivery(cfg, spool, report, path)

    return Spooled(SpoolSettings.of(cfg, spool_dir, path), make, resume)
