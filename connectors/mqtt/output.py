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
is the plant's own: publishing does not depend on the Kafka uplink. With ``sparkplug`` the
rows are published as a Sparkplug B edge node (:mod:`connectors.mqtt.sparkplug_out`).
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
from pydantic import BaseModel, ConfigDict, Field, field_validator
from typing_extensions import override

from connectors._spool import Spool
from connectors._spool_options import SpoolOptions
from connectors._spooled import Outage, Report, Spooled, SpoolSettings, Writer
from connectors.mqtt.config import MqttConnection
from connectors.mqtt.sparkplug_out import SparkplugNode
from flows.logs import reveal
from flows.registry import SinkModel
from wire.records import now_ms
from wire.sparkplug.codec import SparkplugError, decode

__all__ = ["MqttDelivery", "MqttSinkConfig", "SparkplugOutput", "spooled", "topic_for"]

log = logging.getLogger(__name__)

_LEVELS = ("enterprise", "site", "area", "line", "machine")
_FIELDS = (*_LEVELS, "tag", "stream")


class SparkplugOutput(BaseModel):
    """The Sparkplug B identity of the sink: group and edge node (see sparkplug_out)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    group: str = Field(pattern=r"^[^/+#\s]+$")
    edge_node: str = Field(pattern=r"^[^/+#\s]+$")


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
    sparkplug: SparkplugOutput | None = Field(
        default=None, description="publish as a Sparkplug B edge node instead of JSON topics"
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
        # Sparkplug: the node's births, data and death; bdSeq counts this sink's sessions.
        self.node: SparkplugNode | None = None
        self.node_lock = threading.Lock()
        self.sessions = 0

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
            if cfg.sparkplug is not None:
                self.node = self._node(cfg.sparkplug)
                c.will_set(*self.node.death(now_ms()), qos=1, retain=False)
                c.on_message = self._on_command
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
        if self.node is not None:
            # Births first on every (re)connection, then rebirth requests are heard.
            self._publish_births(_c)
            _c.subscribe(self.node.topic("NCMD"), qos=1)
        self.connected.set()

    def _node(self, sp: SparkplugOutput) -> SparkplugNode:
        # A new session: a new bdSeq, the metrics (and their aliases) the node already knew.
        self.sessions += 1
        known = self.node
        node = SparkplugNode(sp.group, sp.edge_node, bd_seq=(self.sessions - 1) % 256)
        if known is not None:
            node.adopt(known)
        return node

    def _publish_births(self, client: mqtt.Client) -> None:
        if self.node is None:
            return
        with self.node_lock:
            for topic, payload in self.node.births(now_ms()):
                client.publish(topic, payload, 0, False)

    def _on_command(self, _c: Any, _u: Any, msg: Any) -> None:
        """NCMD ``Node Control/Rebirth``: publish the births again."""
        try:
            metrics = decode(msg.payload).metrics
        except SparkplugError:
            log.warning("%s: undecodable NCMD on %s ignored", self.cfg.id, msg.topic)
            return
        if any(m.name == "Node Control/Rebirth" and m.value for m in metrics):
            log.info("%s: rebirth requested", self.cfg.id)
            self._publish_births(_c)

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

    def _messages(
        self, rows: list[tuple[str, dict[str, Any]]]
    ) -> list[tuple[str, bytes, int, bool]]:
        cfg = self.cfg
        if self.node is None:
            return [
                (
                    topic_for(cfg.topic, stream, row),
                    json.dumps(_nulls(row), default=str, allow_nan=False).encode(),
                    cfg.qos,
                    cfg.retain,
                )
                for stream, row in rows
            ]
        # Sparkplug B: births and data with QoS 0, never retained (the specification's rule).
        with self.node_lock:
            return [(t, p, 0, False) for t, p in self.node.data(rows, now_ms())]

    @override
    def deliver(self, rows: list[tuple[str, dict[str, Any]]]) -> None:
        c = self._connect()
        cfg = self.cfg
        infos = []
        for topic, payload, qos, retain in self._messages(rows):
            info = c.publish(topic, payload, qos, retain)
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
