"""Sparkplug B host-application state (pure: no I/O), following Sparkplug 3.0.

Topics ``spBv1.0/{group}/{type}/{edge_node}[/{device}]``. NBIRTH/DBIRTH define alias tables,
units (the ``engUnit`` metric property) and data types; NDATA/DDATA resolve aliases; NDEATH
(when its ``bdSeq`` matches the node's birth: a late death of an earlier session is ignored)
and DDEATH mark the node's or device's metrics stale (``stale`` events). Per-edge-node ``seq``
is tracked; a gap, data before a birth or an unknown alias requests a rebirth (an NCMD
``Node Control/Rebirth``), at most once per ``rebirth_min_interval_ms``.

Every metric becomes a point or a dead letter with the reason, never nothing: numbers and
Booleans (0/1) are numeric points, String/Text/UUID text points; 64-bit integers beyond 2**53
(not exact as a float), DataSet, Template, Bytes and File values are dead letters.
``is_historical`` and ``is_transient`` travel with the point. Metric paths are
``{enterprise}/{site}/{group}/{edge_node}/{device or "node"}/{metric}`` with ``/`` in metric
names replaced by ``.``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from connectors.mqtt.payloads import MAX_TS_MS, PayloadError, check_ts
from wire.records import DeadLetter, Event, Quality
from wire.sparkplug.codec import (
    DATATYPES,
    SparkplugError,
    SpMetric,
    SpPayload,
    encode,
    metric_of,
    parse,
)

__all__ = ["Sample", "SparkplugState", "rebirth_payload"]

log = logging.getLogger(__name__)

# path, unit, ts_ms, value (float, or str for text), quality, is_historical, is_transient
Sample = tuple[str, str, int, float | str, int, bool, bool]

_TEXT_TYPES = {12, 14, 15}  # String, Text, UUID
_EXACT = 1 << 53
_UNIT_KEYS = ("engunit", "engunits", "unit", "units")


@dataclass
class _Metric:
    name: str
    device: str | None
    unit: str = ""
    datatype: int | None = None
    path: str = ""


@dataclass
class _Node:
    aliases: dict[int, _Metric] = field(default_factory=dict)
    metrics: dict[tuple[str | None, str], _Metric] = field(default_factory=dict)
    seq: int | None = None
    bd_seq: int | None = None
    last_rebirth_ms: int = -(10**12)
    online: bool = False


def _unit(m: SpMetric) -> str | None:
    for key, value in (m.properties or {}).items():
        if key.lower() in _UNIT_KEYS and isinstance(value, str):
            return value
    return None


def _bd_seq(metrics: tuple[SpMetric, ...]) -> int | None:
    for m in metrics:
        if m.name == "bdSeq" and isinstance(m.value, int) and not isinstance(m.value, bool):
            return m.value
    return None


class SparkplugState:
    """Sparkplug B host-application state machine; see the module docstring."""

    def __init__(self, *, enterprise: str, site: str, rebirth_min_interval_ms: int = 10_000):
        self.enterprise = enterprise
        self.site = site
        self.rebirth_min_interval_ms = rebirth_min_interval_ms
        self.nodes: dict[tuple[str, str], _Node] = {}
        self.rebirths_requested = 0

    def path(self, group: str, node: str, device: str | None, metric: str) -> str:
        """Return the ISA-95 path of a metric."""
        return "/".join(
            (self.enterprise, self.site, group, node, device or "node", metric.replace("/", "."))
        )

    def _rebirth(
        self, group: str, node_id: str, node: _Node, now: int, why: str, out: list[str]
    ) -> None:
        if now - node.last_rebirth_ms >= self.rebirth_min_interval_ms:
            node.last_rebirth_ms = now
            self.rebirths_requested += 1
            log.info("sparkplug: rebirth request to %s/%s (%s)", group, node_id, why)
            out.append(f"spBv1.0/{group}/NCMD/{node_id}")

    def handle(
        self, topic: str, payload: bytes, now: int
    ) -> tuple[list[Sample], list[DeadLetter], list[Event], list[str]]:
        """Process one message: ``(samples, dead letters, events, rebirth topics)``.

        Never raises: whatever the payload, the outcome is samples and/or dead letters.
        """
        try:
            return self._handle(topic, payload, now)
        except Exception as e:  # a decoder bug must not take the flow down: report it
            log.exception("sparkplug: unexpected failure on %s", topic)
            reason = f"{topic}: undecodable ({type(e).__name__}: {e})"
            return [], [DeadLetter("mqtt", reason, payload, source=topic)], [], []

    def _handle(
        self, topic: str, payload: bytes, now: int
    ) -> tuple[list[Sample], list[DeadLetter], list[Event], list[str]]:
        samples: list[Sample] = []
        dead: list[DeadLetter] = []
        events: list[Event] = []
        rebirth: list[str] = []

        def reject(reason: str) -> None:
            dead.append(DeadLetter("mqtt", f"{topic}: {reason}", payload, source=topic))

        parts = topic.split("/")
        if len(parts) not in (4, 5) or parts[0] != "spBv1.0":
            dead.append(DeadLetter("mqtt", f"not a Sparkplug B topic: {topic}", payload))
            return samples, dead, events, rebirth
        group, mtype, node_id = parts[1], parts[2], parts[3]
        device = parts[4] if len(parts) == 5 else None
        if mtype in ("NCMD", "DCMD", "STATE") or group == "STATE":
            return samples, dead, events, rebirth
        try:
            raw = parse(payload)
        except SparkplugError as e:
            reject(str(e))
            return samples, dead, events, rebirth
        p = SpPayload(
            timestamp=raw.timestamp if raw.HasField("timestamp") else None,
            seq=raw.seq if raw.HasField("seq") else None,
            metrics=(),
        )
        node = self.nodes.setdefault((group, node_id), _Node())
        if mtype == "NDEATH":
            bd = _bd_seq(tuple(metric_of(m) for m in raw.metrics))
            if bd is not None and node.bd_seq is not None and bd != node.bd_seq:
                log.info("sparkplug: %s/%s: NDEATH of an earlier session ignored", group, node_id)
                return samples, dead, events, rebirth
            node.online = False
            for dev, name in sorted(node.metrics, key=lambda k: (k[0] or "", k[1])):
                events.append(self._stale(group, node_id, dev, name, now, "NDEATH"))
            return samples, dead, events, rebirth
        if mtype == "DDEATH":
            for dev, name in sorted(k for k in node.metrics if k[0] == device):
                events.append(self._stale(group, node_id, dev, name, now, "DDEATH"))
            return samples, dead, events, rebirth
        # Sequence: NBIRTH restarts it; every other message must be previous + 1 (mod 256).
        if mtype == "NBIRTH":
            node.aliases = {a: m for a, m in node.aliases.items() if m.device is not None}
            node.metrics = {k: m for k, m in node.metrics.items() if k[0] is not None}
            node.online = True
            node.bd_seq = _bd_seq(tuple(metric_of(m) for m in raw.metrics))
        elif p.seq is not None and node.seq is not None and p.seq != (node.seq + 1) % 256:
            why = f"seq gap: expected {(node.seq + 1) % 256}, got {p.seq}"
            self._rebirth(group, node_id, node, now, why, rebirth)
        elif node.seq is None and mtype != "NBIRTH":
            self._rebirth(group, node_id, node, now, "data before birth", rebirth)
        if p.seq is not None:
            node.seq = p.seq
        ts_default = now
        if p.timestamp is not None:
            try:
                ts_default = check_ts(p.timestamp)
            except PayloadError as e:
                reject(f"payload {e}")
                return samples, dead, events, rebirth
        birth = mtype in ("NBIRTH", "DBIRTH")
        aliases = node.aliases
        append = samples.append
        for pm in raw.metrics:
            if not birth and not pm.name and pm.WhichOneof("value") == "double_value":
                # The hot path (DATA by alias, a Double): no metric object is built.
                meta = aliases.get(pm.alias)
                ts = pm.timestamp or ts_default
                if meta is not None and not pm.is_null and ts < MAX_TS_MS:
                    append(
                        (
                            meta.path,
                            meta.unit,
                            ts,
                            pm.double_value,
                            0,
                            pm.is_historical,
                            pm.is_transient,
                        )
                    )
                    continue
            m = metric_of(pm)
            meta = self._resolve(m, node, device, birth, group, node_id, now, rebirth, reject)
            if meta is None:
                continue
            sample = self._sample(m, meta, group, node_id, device, ts_default, reject)
            if sample is not None:
                append(sample)
        return samples, dead, events, rebirth

    def _resolve(
        self,
        m: SpMetric,
        node: _Node,
        device: str | None,
        birth: bool,
        group: str,
        node_id: str,
        now: int,
        rebirth: list[str],
        reject: Any,
    ) -> _Metric | None:
        if birth:
            if not m.name:
                reject("birth metric without a name")
                return None
            if m.name == "bdSeq":
                return None  # the session counter, not a metric of the plant
            path = self.path(group, node_id, device, m.name)
            meta = _Metric(m.name, device, _unit(m) or "", m.datatype, path)
            node.metrics[(device, m.name)] = meta
            if m.alias is not None:
                node.aliases[m.alias] = meta
            return meta
        if m.name:
            known_name = node.metrics.get((device, m.name))
            if known_name is not None:
                return known_name
            path = self.path(group, node_id, device, m.name)
            return _Metric(m.name, device, "", m.datatype, path)
        known = node.aliases.get(m.alias) if m.alias is not None else None
        if known is None:
            reject(f"unknown alias {m.alias} (rebirth requested)")
            self._rebirth(group, node_id, node, now, f"unknown alias {m.alias}", rebirth)
            return None
        return known

    def _sample(
        self,
        m: SpMetric,
        meta: _Metric,
        group: str,
        node_id: str,
        device: str | None,
        ts_default: int,
        reject: Any,
    ) -> Sample | None:
        if m.is_null:
            return None  # a null value is "no value", not a sample
        value = m.value
        if (
            type(value) is float
            and m.kind == "scalar"
            and (m.timestamp is None or 0 <= m.timestamp < MAX_TS_MS)
        ):
            # The common case, a float with a sane time: no further checks to make.
            ts = m.timestamp or ts_default
            return (meta.path, meta.unit, ts, value, 0, m.is_historical, m.is_transient)
        datatype = m.datatype if m.datatype is not None else meta.datatype
        type_name = DATATYPES.get(datatype or 0, f"type {datatype}")
        if m.kind != "scalar":
            reject(f"metric {meta.name}: {m.kind} values ({type_name}) are not supported")
            return None
        try:
            ts = check_ts(m.timestamp) if m.timestamp is not None else ts_default
        except PayloadError as e:
            reject(f"metric {meta.name}: {e}")
            return None
        out: float | str
        if isinstance(value, bool):
            out = float(value)
        elif isinstance(value, int):
            if abs(value) > _EXACT:
                reject(
                    f"metric {meta.name}: {type_name} value {value} is beyond 2**53 and "
                    "cannot be kept exactly as a number"
                )
                return None
            out = float(value)
        elif isinstance(value, float) or (
            isinstance(value, str) and (datatype in _TEXT_TYPES or datatype is None)
        ):
            out = value
        else:
            reject(f"metric {meta.name}: {type_name} values are not supported")
            return None
        return (meta.path, meta.unit, ts, out, int(Quality.GOOD), m.is_historical, m.is_transient)

    def _stale(
        self, group: str, node_id: str, device: str | None, name: str, now: int, why: str
    ) -> Event:
        return Event(
            kind="stale",
            rule=f"sparkplug.{why.lower()}",
            path=self.path(group, node_id, device, name),
            ts_ms=now,
            severity="warning",
            state="raised",
            message=f"{why}: metric is stale until the next birth",
        )


def rebirth_payload(now_ms: int) -> bytes:
    """NCMD payload asking an edge node to publish its births again."""
    return encode([("Node Control/Rebirth", None, "Boolean", True)], seq=None, timestamp=now_ms)
