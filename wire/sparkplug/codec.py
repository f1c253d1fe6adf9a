"""Sparkplug B payload decoding and encoding (protobuf generated from sparkplug_b.proto).

Signed integers are read from the low bits of whichever value field carries them, so both the
specification's encoding and other implementations' (e.g. Tahu JS writes Int8 -5 as the 32-bit
two's complement 4294967291, and UInt32 in ``long_value``) decode to the same number. Integer
metrics decode to exact Python ints (a UInt64 may exceed what a float holds exactly); DataSet
and Template values are reported by ``kind`` and not decoded. Metric properties (``engUnit``
and others) decode to plain values.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from google.protobuf.message import DecodeError

from wire.errors import CodecError
from wire.sparkplug.sparkplug_b_pb2 import Payload  # type: ignore[attr-defined]

__all__ = [
    "DATATYPES",
    "SpMetric",
    "SpPayload",
    "SparkplugError",
    "decode",
    "encode",
    "metric_of",
    "parse",
]

DATATYPES = {
    1: "Int8",
    2: "Int16",
    3: "Int32",
    4: "Int64",
    5: "UInt8",
    6: "UInt16",
    7: "UInt32",
    8: "UInt64",
    9: "Float",
    10: "Double",
    11: "Boolean",
    12: "String",
    13: "DateTime",
    14: "Text",
    15: "UUID",
    16: "DataSet",
    17: "Bytes",
    18: "File",
    19: "Template",
}
_CODES = {v: k for k, v in DATATYPES.items()}
_SIGNED_BITS = {1: 8, 2: 16, 3: 32, 4: 64}
_UNSIGNED_BITS = {5: 8, 6: 16, 7: 32, 8: 64, 13: 64}


class SparkplugError(CodecError):
    """A Sparkplug payload or metric cannot be decoded."""


class SpMetric(NamedTuple):
    """One decoded metric; ``value`` is None when ``is_null`` or not a scalar.

    ``kind`` is ``scalar``, ``dataset``, ``template`` or ``extension`` (the last three carry
    no decoded value). A tuple: payloads carry thousands of metrics.
    """

    name: str | None
    alias: int | None
    timestamp: int | None
    datatype: int | None
    value: int | float | bool | str | bytes | None
    is_null: bool = False
    is_historical: bool = False
    is_transient: bool = False
    properties: dict[str, Any] | None = None
    kind: str = "scalar"


@dataclass(frozen=True, slots=True)
class SpPayload:
    """A decoded payload."""

    timestamp: int | None
    seq: int | None
    metrics: tuple[SpMetric, ...]


_KINDS = {"dataset_value": "dataset", "template_value": "template", "extension_value": "extension"}


def _value(m: Any, datatype: int | None) -> tuple[int | float | bool | str | bytes | None, str]:
    field = m.WhichOneof("value")
    if field is None:
        return None, "scalar"
    if field in _KINDS:
        return None, _KINDS[field]
    raw = getattr(m, field)
    if field in ("int_value", "long_value"):
        if datatype in _SIGNED_BITS:
            bits = _SIGNED_BITS[datatype]
            v = int(raw) & ((1 << bits) - 1)
            return (v - (1 << bits) if v >> (bits - 1) else v), "scalar"
        if datatype in _UNSIGNED_BITS:
            return int(raw) & ((1 << _UNSIGNED_BITS[datatype]) - 1), "scalar"
        return int(raw), "scalar"
    if isinstance(raw, bool | str | bytes):
        return raw, "scalar"
    return float(raw), "scalar"


def _properties(ps: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, pv in zip(ps.keys, ps.values, strict=False):
        field = pv.WhichOneof("value")
        if pv.is_null or field is None or field.startswith("propertyset"):
            continue
        out[str(key)] = getattr(pv, field)
    return out


def parse(data: bytes) -> Any:
    """Parse a Sparkplug B payload into its protobuf message; raises :class:`SparkplugError`."""
    p = Payload()
    try:
        p.ParseFromString(data)
    except DecodeError as e:
        msg = f"malformed Sparkplug B payload: {e}"
        raise SparkplugError(msg) from e
    return p


def metric_of(m: Any) -> SpMetric:
    """Decode one protobuf metric."""
    # Zero means "absent" for name, timestamp and data type (0 is Unknown, and a metric has
    # neither an empty name nor a 1970 timestamp); only alias 0 needs HasField.
    datatype = m.datatype or None
    field = m.WhichOneof("value")
    if m.is_null or field is None:
        value, kind = None, "scalar"
    elif field == "double_value":
        value, kind = m.double_value, "scalar"
    else:
        value, kind = _value(m, datatype)
    alias = m.alias
    props = m.properties
    return SpMetric(
        m.name or None,
        alias if alias or m.HasField("alias") else None,
        m.timestamp or None,
        datatype,
        value,
        m.is_null,
        m.is_historical,
        m.is_transient,
        _properties(props) if props.keys else None,
        kind,
    )


def decode(data: bytes) -> SpPayload:
    """Decode a Sparkplug B payload; raises :class:`SparkplugError` on malformed bytes."""
    p = parse(data)
    return SpPayload(
        timestamp=p.timestamp if p.HasField("timestamp") else None,
        seq=p.seq if p.HasField("seq") else None,
        metrics=tuple(metric_of(m) for m in p.metrics),
    )


def encode(
    metrics: Sequence[tuple[str | None, int | None, str, Any]],
    *,
    seq: int | None,
    timestamp: int,
    units: dict[str, str] | None = None,
    metric_timestamps: list[int] | None = None,
) -> bytes:
    """Encode ``(name, alias, datatype name, value)`` metrics.

    ``units`` adds an ``engUnit`` property to the named metrics (births);
    ``metric_timestamps`` gives each metric its own time (default: the payload's).
    """
    p = Payload()
    p.timestamp = timestamp
    if seq is not None:
        p.seq = seq
    for i, (name, alias, dtype, value) in enumerate(metrics):
        m = p.metrics.add()
        if name is not None:
            m.name = name
        if alias is not None:
            m.alias = alias
        m.timestamp = timestamp if metric_timestamps is None else metric_timestamps[i]
        code = _CODES[dtype]
        m.datatype = code
        if units and name in units:
            m.properties.keys.append("engUnit")
            pv = m.properties.values.add()
            pv.type = _CODES["String"]
            pv.string_value = units[name]
        if value is None:
            m.is_null = True
        elif code in (1, 2, 3, 5, 6, 7):
            m.int_value = int(value) & 0xFFFFFFFF
        elif code in (4, 8, 13):
            m.long_value = int(value) & 0xFFFFFFFFFFFFFFFF
        elif code == 9:
            m.float_value = float(value)
        elif code == 10:
            m.double_value = float(value)
        elif code == 11:
            m.boolean_value = bool(value)
        elif code in (12, 14, 15):
            m.string_value = str(value)
        else:
            m.bytes_value = bytes(value)
    data: bytes = p.SerializeToString()
    return data
