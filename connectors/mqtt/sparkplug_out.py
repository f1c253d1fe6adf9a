"""Sparkplug B output: the MQTT sink's rows as an edge node's births and data (pure, no I/O).

The sink is edge node ``edge_node`` of group ``group``. Each machine (ISA-95 path up to the
machine; a site-level row's device is ``_site``) is a device named ``area.line.machine``.
Rows become metrics: an aggregate row ``{tag}/{window}/mean``, ``/min``, ``/max`` and, when
it has one, ``/energy`` (Double, unit as ``engUnit``); an event ``events/{kind}/{rule}/{tag}``
(String: its state); a KPI ``kpi/{name}`` (Double). Every metric gets an alias when first
seen; a device whose metrics grew is born again (DBIRTH with every metric, its alias, type,
unit and latest value) before its data (DDATA by alias). NBIRTH carries ``bdSeq`` and
``Node Control/Rebirth``; NDEATH (the MQTT will) carries the same ``bdSeq``; ``seq`` counts
0-255 over the node's messages from its NBIRTH. A rebirth request (NCMD ``Node
Control/Rebirth``) publishes NBIRTH and every DBIRTH again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from wire.sparkplug.codec import encode

__all__ = ["SparkplugNode"]

Message = tuple[str, bytes]
_AGG_FIELDS = ("mean", "min", "max", "energy")


@dataclass
class _Device:
    # metric name -> (alias, datatype, unit)
    metrics: dict[str, tuple[int, str, str]] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)
    born: bool = False


@dataclass
class SparkplugNode:
    """Births, data and death of one Sparkplug edge node; see the module docstring."""

    group: str
    edge_node: str
    bd_seq: int = 0
    seq: int = 0
    _devices: dict[str, _Device] = field(default_factory=dict)
    _next_alias: int = 1

    def adopt(self, earlier: SparkplugNode) -> None:
        """Keep an earlier session's devices and aliases (they are born again at connect)."""
        self._devices, self._next_alias = earlier._devices, earlier._next_alias
        for dev in self._devices.values():
            dev.born = False

    def topic(self, kind: str, device: str | None = None) -> str:
        """``spBv1.0/{group}/{kind}/{edge_node}[/{device}]``."""
        tail = f"/{device}" if device else ""
        return f"spBv1.0/{self.group}/{kind}/{self.edge_node}{tail}"

    def death(self, now_ms: int) -> Message:
        """Return the NDEATH to register as the MQTT will of this session."""
        payload = encode([("bdSeq", None, "UInt64", self.bd_seq)], seq=None, timestamp=now_ms)
        return self.topic("NDEATH"), payload

    def _next_seq(self) -> int:
        seq, self.seq = self.seq, (self.seq + 1) % 256
        return seq

    def births(self, now_ms: int) -> list[Message]:
        """NBIRTH (seq 0) and a DBIRTH for every known device: at connect and on rebirth."""
        self.seq = 0
        node = encode(
            [
                ("bdSeq", None, "UInt64", self.bd_seq),
                ("Node Control/Rebirth", None, "Boolean", False),
            ],
            seq=self._next_seq(),
            timestamp=now_ms,
        )
        out = [(self.topic("NBIRTH"), node)]
        for name in sorted(self._devices):
            out.append(self._dbirth(name, now_ms))
        return out

    def _dbirth(self, name: str, now_ms: int) -> Message:
        dev = self._devices[name]
        dev.born = True
        metrics = [
            (metric, alias, dtype, dev.values.get(metric))
            for metric, (alias, dtype, _unit) in dev.metrics.items()
        ]
        units = {m: u for m, (_a, _t, u) in dev.metrics.items() if u}
        payload = encode(metrics, seq=self._next_seq(), timestamp=now_ms, units=units)
        return self.topic("DBIRTH", name), payload

    def data(self, rows: list[tuple[str, dict[str, Any]]], now_ms: int) -> list[Message]:
        """DBIRTHs of devices with new metrics, then each device's DDATA, for ``rows``."""
        per_device: dict[str, list[tuple[str, Any, int]]] = {}
        for stream, row in rows:
            device, ts, metrics = _metrics(stream, row)
            dev = self._devices.setdefault(device, _Device())
            for metric, dtype, unit, value in metrics:
                if metric not in dev.metrics:
                    dev.metrics[metric] = (self._next_alias, dtype, unit)
                    self._next_alias += 1
                    dev.born = False
                dev.values[metric] = value
                per_device.setdefault(device, []).append((metric, value, ts))
        out: list[Message] = []
        for device in sorted(per_device):
            dev = self._devices[device]
            if not dev.born:
                out.append(self._dbirth(device, now_ms))
            items = per_device[device]
            payload = encode(
                [(None, dev.metrics[m][0], dev.metrics[m][1], v) for m, v, _ in items],
                seq=self._next_seq(),
                timestamp=now_ms,
                metric_timestamps=[ts for _, _, ts in items],
            )
            out.append((self.topic("DDATA", device), payload))
        return out


def _device(path: str) -> str:
    parts = path.split("/")
    return ".".join(parts[2:5]) if len(parts) >= 5 else "_site"


def _number(v: Any) -> float | None:
    return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else float(v)


def _metrics(stream: str, row: dict[str, Any]) -> tuple[str, int, list[tuple[str, str, str, Any]]]:
    """Return the device, time and ``(metric, datatype, unit, value)`` of one row."""
    path = str(row.get("path", ""))
    device = _device(path)
    parts = path.split("/")
    tag = parts[5] if len(parts) > 5 else "_"
    ts = int(row.get("ts_ms", row.get("start_ms", 0)))
    if stream == "kpis":
        unit = str(row.get("unit", ""))
        return device, ts, [(f"kpi/{row['name']}", "Double", unit, _number(row["value"]))]
    if stream == "events":
        name = f"events/{row.get('kind')}/{row.get('rule')}/{tag}"
        return device, ts, [(name, "String", "", str(row.get("state") or row.get("message", "")))]
    window = str(row.get("window", row.get("window_ms", "")))
    out = []
    for f in _AGG_FIELDS:
        if f in row and _number(row[f]) is not None:
            unit = str(row.get("energy_unit" if f == "energy" else "unit", ""))
            out.append((f"{tag}/{window}/{f}", "Double", unit, _number(row[f])))
    return device, ts, out
