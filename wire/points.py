"""Wire encodings of point batches on Kafka.

One Kafka message carries the samples of one tag from one batch; its key is the tag path
(``enterprise/site/area/line/machine/tag``), so a tag always lands in the same partition and
keeps its order. Two value encodings:

``binary`` (default, ``content-type: application/x-edgeflow-points``)::

    magic   b"EFP1"
    u16     unit length, then the unit in UTF-8
    u32     n
    i64[n]  timestamps, epoch ms, little endian
    f64[n]  values
    u8[n]   qualities (0 GOOD, 1 UNCERTAIN, 2 BAD)

``json`` (``content-type: application/json``)::

    {"path": "...", "unit": "kW", "ts_ms": [...], "value": [...], "quality": [...]}

Rows of other streams (aggregates, events, KPIs, dead letters) are JSON objects keyed by their
path. Undecodable messages raise :class:`CodecError` and go to the dead-letter stream.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import orjson

from wire.errors import CodecError
from wire.records import PointBatch, TagRef

__all__ = [
    "CodecError",
    "Decoded",
    "Encoding",
    "PointsDecoder",
    "decode_points",
    "encode_points",
    "encode_row",
]

Encoding = Literal["binary", "json"]
MAGIC = b"EFP1"
CONTENT_TYPES = {"binary": "application/x-edgeflow-points", "json": "application/json"}


def encode_points(batch: PointBatch, encoding: Encoding = "binary") -> list[tuple[str, bytes, int]]:
    """Split a batch per tag: ``[(key, value, max_ts_ms)]`` in tag-table order."""
    out: list[tuple[str, bytes, int]] = []
    if not len(batch):
        return out
    order = np.argsort(batch.tag_idx, kind="stable")
    idx = batch.tag_idx[order]
    starts = np.flatnonzero(np.r_[True, idx[1:] != idx[:-1]])
    ends = np.r_[starts[1:], len(idx)]
    ts_all, val_all, q_all = batch.ts_ms[order], batch.value[order], batch.quality[order]
    for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
        ref = batch.tags[int(idx[s])]
        ts, val, q = ts_all[s:e], val_all[s:e], q_all[s:e]
        if encoding == "binary":
            unit = ref.unit.encode()
            value = b"".join(
                (
                    MAGIC,
                    struct.pack("<H", len(unit)),
                    unit,
                    struct.pack("<I", e - s),
                    ts.astype("<i8").tobytes(),
                    val.astype("<f8").tobytes(),
                    q.astype(np.uint8).tobytes(),
                )
            )
        else:
            value = json.dumps(
                {
                    "path": ref.path,
                    "unit": ref.unit,
                    "ts_ms": ts.tolist(),
                    "value": val.tolist(),
                    "quality": q.tolist(),
                },
                separators=(",", ":"),
            ).encode()
        out.append((ref.path, value, int(ts.max())))
    return out


def decode_points(
    key: bytes | None, value: bytes | None
) -> tuple[str, str, np.ndarray, np.ndarray, np.ndarray]:
    """Decode one message to ``(path, unit, ts_ms, value, quality)``."""
    if not key or value is None:
        msg = "message has no key (tag path) or no value"
        raise CodecError(msg)
    path = key.decode("utf-8", errors="replace")
    try:
        if value[:4] == MAGIC:
            (ulen,) = struct.unpack_from("<H", value, 4)
            unit = value[6 : 6 + ulen].decode()
            (n,) = struct.unpack_from("<I", value, 6 + ulen)
            off = 10 + ulen
            if len(value) != off + 17 * n:
                msg = f"binary payload of {len(value)} bytes does not hold {n} points"
                raise CodecError(msg)
            ts = np.frombuffer(value, "<i8", n, off).astype(np.int64)
            val = np.frombuffer(value, "<f8", n, off + 8 * n).astype(np.float64)
            q = np.frombuffer(value, np.uint8, n, off + 16 * n).copy()
            return path, unit, ts, val, q
        d: dict[str, Any] = json.loads(value)
        ts = np.asarray(d["ts_ms"], np.int64)
        val = np.asarray(d["value"], np.float64)
        q = np.asarray(d.get("quality", [0] * len(ts)), np.uint8)
        if not len(ts) == len(val) == len(q):
            msg = "json payload columns differ in length"
            raise CodecError(msg)
        return path, str(d.get("unit", "")), ts, val, q
    except CodecError:
        raise
    except (ValueError, KeyError, TypeError, struct.error, UnicodeDecodeError) as e:
        msg = f"undecodable points payload for {path}: {e}"
        raise CodecError(msg) from e


@dataclass(frozen=True, slots=True)
class Decoded:
    """Many decoded messages as columns.

    ``refs[j]``, ``counts[j]`` and ``message[j]`` describe the ``j``-th decoded message (its
    tag, its number of points, its index in the input); the point columns hold the points of
    all decoded messages in input order. ``errors`` holds ``(input index, reason)`` for the
    messages that could not be decoded.
    """

    refs: list[TagRef]
    counts: np.ndarray
    message: list[int]
    ts_ms: np.ndarray
    value: np.ndarray
    quality: np.ndarray
    errors: list[tuple[int, str]]


class PointsDecoder:
    """Decodes a list of messages at once (the hot path of a Kafka replay).

    The binary encoding is parsed with a few byte operations per message and the point
    columns of all messages are converted in one step; JSON payloads and errors take the
    per-message path of :func:`decode_points`. Tag references are interned per (key, unit).
    """

    def __init__(self) -> None:
        self._refs: dict[tuple[bytes, bytes], TagRef] = {}

    def _ref(self, key: bytes, unit: bytes) -> TagRef:
        ref = self._refs.get((key, unit))
        if ref is None:
            ref = TagRef(key.decode("utf-8", errors="replace"), unit.decode())
            if len(self._refs) < 1_000_000:
                self._refs[(key, unit)] = ref
        return ref

    def decode(self, keys: Sequence[bytes | None], values: Sequence[bytes | None]) -> Decoded:
        """Decode ``values[i]`` (key ``keys[i]``) for every ``i``."""
        refs: list[TagRef] = []
        counts: list[int] = []
        message: list[int] = []
        errors: list[tuple[int, str]] = []
        ts_parts: list[bytes] = []
        val_parts: list[bytes] = []
        q_parts: list[bytes] = []
        for i, (k, v) in enumerate(zip(keys, values, strict=True)):
            if k and v and v[:4] == MAGIC and len(v) >= 10:
                ulen = v[4] | v[5] << 8
                hdr = 10 + ulen
                n = int.from_bytes(v[6 + ulen : hdr], "little")
                if len(v) == hdr + 17 * n:
                    try:
                        ref = self._ref(k, v[6 : 6 + ulen])
                    except UnicodeDecodeError as e:
                        errors.append((i, f"undecodable points payload: {e}"))
                        continue
                    a, b = hdr + 8 * n, hdr + 16 * n
                    ts_parts.append(v[hdr:a])
                    val_parts.append(v[a:b])
                    q_parts.append(v[b:])
                    refs.append(ref)
                    counts.append(n)
                    message.append(i)
                    continue
            try:
                path, unit, t, val, q = decode_points(k, v)
            except CodecError as e:
                errors.append((i, str(e)))
                continue
            ts_parts.append(t.astype("<i8").tobytes())
            val_parts.append(val.astype("<f8").tobytes())
            q_parts.append(q.tobytes())
            refs.append(TagRef(path, unit))
            counts.append(len(t))
            message.append(i)
        return Decoded(
            refs=refs,
            counts=np.asarray(counts, np.int64),
            message=message,
            ts_ms=np.frombuffer(b"".join(ts_parts), "<i8").astype(np.int64),
            value=np.frombuffer(b"".join(val_parts), "<f8").astype(np.float64),
            quality=np.frombuffer(b"".join(q_parts), np.uint8).copy(),
            errors=errors,
        )


def encode_row(row: dict[str, Any]) -> bytes:
    """Encode a row (aggregate, event, KPI, dead letter) as compact JSON.

    Non-finite floats become ``null`` (JSON has no NaN); other types fall back to ``str``.
    """
    return orjson.dumps(row, default=str, option=orjson.OPT_SERIALIZE_NUMPY)
