"""Wire encodings of point batches on Kafka.

A message carries the points of one shard (a site, or finer) from one batch; its key is the
shard (``enterprise/site[/area...]``), so a shard's points stay in one partition and keep
their order, and its state lives with its data. Large batches are cut into messages of at most
``max_points`` points. Value encodings:

``binary`` (default, ``content-type: application/x-edgeflow-points``), little endian::

    magic   b"EFP2"
    u32     t, the number of tags, then t times:
              u16 path length, path (UTF-8), u16 unit length, unit (UTF-8)
    u32     n, the number of points
    u32[n]  tag index of each point (into the table above)
    i64[n]  timestamps, epoch ms
    f64[n]  values
    u8[n]   qualities (0 GOOD, 1 UNCERTAIN, 2 BAD)
    u8      flags present: bit 0 historical, bit 1 transient; then u8[n] per present flag

``json`` (``content-type: application/json``)::

    {"tags": [[path, unit], ...], "tag_idx": [...], "ts_ms": [...], "value": [...],
     "quality": [...], "historical": [...]?, "transient": [...]?}

The first format (``EFP1``: one tag per message, keyed by the tag path) still decodes, so a
topic written by an earlier version replays. Rows of other streams (aggregates, events, KPIs,
dead letters) are JSON objects keyed by their path. A message that does not decode is one
error (a dead letter), never an exception out of :class:`PointsDecoder`.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import orjson

from wire.errors import CodecError
from wire.records import POINT_FLAGS, PointBatch, TagRef, shard_of

__all__ = [
    "CONTENT_TYPES",
    "MAX_TS_MS",
    "CodecError",
    "Decoded",
    "Encoding",
    "PointsDecoder",
    "encode_batch",
    "encode_messages",
    "encode_row",
]

Encoding = Literal["binary", "json"]
MAGIC = b"EFP2"
MAGIC_V1 = b"EFP1"
CONTENT_TYPES = {"binary": "application/x-edgeflow-points", "json": "application/json"}
# Point times must fit every column they travel in (ms since 1970, before the year 2248).
MAX_TS_MS = 1 << 43


def _table(tags: Sequence[TagRef]) -> bytes:
    parts = [struct.pack("<I", len(tags))]
    for t in tags:
        p, u = t.path.encode(), t.unit.encode()
        parts.append(struct.pack("<H", len(p)) + p + struct.pack("<H", len(u)) + u)
    return b"".join(parts)


def encode_batch(batch: PointBatch, encoding: Encoding = "binary") -> bytes:
    """Encode a whole batch (any number of tags) as one message value."""
    used = np.unique(batch.tag_idx)
    lut = np.zeros(len(batch.tags), np.uint32)
    lut[used] = np.arange(len(used), dtype=np.uint32)
    tags = [batch.tags[i] for i in used.tolist()]
    idx = lut[batch.tag_idx]
    flags = [f for f in POINT_FLAGS if f in batch.extra]
    if encoding == "json":
        doc: dict[str, Any] = {
            "tags": [[t.path, t.unit] for t in tags],
            "tag_idx": idx.tolist(),
            "ts_ms": batch.ts_ms.tolist(),
            "value": batch.value.tolist(),
            "quality": batch.quality.tolist(),
        }
        for f in flags:
            doc[f] = np.asarray(batch.extra[f], np.bool_).tolist()
        return json.dumps(doc, separators=(",", ":")).encode()
    mask = sum(1 << POINT_FLAGS.index(f) for f in flags)
    return b"".join(
        (
            MAGIC,
            _table(tags),
            struct.pack("<I", len(batch)),
            idx.astype("<u4").tobytes(),
            batch.ts_ms.astype("<i8").tobytes(),
            batch.value.astype("<f8").tobytes(),
            batch.quality.astype(np.uint8).tobytes(),
            bytes([mask]),
            *(np.asarray(batch.extra[f], np.uint8).tobytes() for f in flags),
        )
    )


def encode_messages(
    batch: PointBatch,
    encoding: Encoding = "binary",
    *,
    shard_levels: int = 2,
    max_points: int = 20_000,
) -> list[tuple[str, bytes, int]]:
    """Split a batch by shard and size: ``[(shard key, value, newest ts_ms)]``."""
    out: list[tuple[str, bytes, int]] = []
    if not len(batch):
        return out
    shard_of_tag = [shard_of(t.path, shard_levels) for t in batch.tags]
    # Only the shards of tags that have points here (a table may list more tags).
    keys = sorted({shard_of_tag[i] for i in np.unique(batch.tag_idx).tolist()})
    if len(keys) == 1:
        groups = [(keys[0], batch)]
    else:
        code = np.asarray([keys.index(k) for k in shard_of_tag], np.int32)[batch.tag_idx]
        groups = [(k, batch.select(code == i)) for i, k in enumerate(keys)]
    for key, part in groups:
        if len(part) <= max_points:
            out.append((key, encode_batch(part, encoding), int(part.ts_ms.max())))
            continue
        pos = np.arange(len(part))
        for lo in range(0, len(part), max_points):
            chunk = part.select((pos >= lo) & (pos < lo + max_points))
            out.append((key, encode_batch(chunk, encoding), int(chunk.ts_ms.max())))
    return out


@dataclass(frozen=True, slots=True)
class Decoded:
    """Many decoded messages as columns.

    ``tags`` is a table of every tag seen; per point: ``tag_idx`` into it, ``message`` (the
    index of the input message it came from), time, value, quality and any flags. ``errors``
    holds ``(input index, reason)`` for the messages that could not be decoded.
    """

    tags: list[TagRef]
    tag_idx: npt.NDArray[np.int64]
    message: npt.NDArray[np.int64]
    ts_ms: npt.NDArray[np.int64]
    value: npt.NDArray[np.float64]
    quality: npt.NDArray[np.uint8]
    flags: dict[str, npt.NDArray[np.bool_]] = field(default_factory=dict)
    errors: list[tuple[int, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ts_ms)


@dataclass
class _Part:
    message: int
    refs: list[int]  # decoder-wide tag ids of this message's table
    idx: npt.NDArray[Any]
    ts: npt.NDArray[Any]
    val: npt.NDArray[Any]
    q: npt.NDArray[Any]
    flags: dict[str, npt.NDArray[Any]]


class PointsDecoder:
    """Decodes many messages at once (the hot path of a Kafka replay).

    Tag tables are parsed once per distinct table (messages of one edge share theirs) and tag
    references are interned, so per message only a few byte operations remain; the point
    columns of all messages are converted together.
    """

    def __init__(self) -> None:
        self._ids: dict[TagRef, int] = {}
        self.tags: list[TagRef] = []
        self._tables: dict[bytes, list[int]] = {}

    def _id(self, ref: TagRef) -> int:
        i = self._ids.get(ref)
        if i is None:
            i = self._ids[ref] = len(self.tags)
            self.tags.append(ref)
        return i

    def _table(self, raw: bytes) -> list[int]:
        ids = self._tables.get(raw)
        if ids is None:
            (t,) = struct.unpack_from("<I", raw, 0)
            pos, ids = 4, []
            for _ in range(t):
                (pl,) = struct.unpack_from("<H", raw, pos)
                path = raw[pos + 2 : pos + 2 + pl].decode()
                pos += 2 + pl
                (ul,) = struct.unpack_from("<H", raw, pos)
                unit = raw[pos + 2 : pos + 2 + ul].decode()
                pos += 2 + ul
                ids.append(self._id(TagRef(path, unit)))
            if len(self._tables) < 10_000:
                self._tables[raw] = ids
        return ids

    def _v2(self, i: int, v: bytes) -> _Part:
        if len(v) < 8:
            msg = "truncated header"
            raise CodecError(msg)
        (t,) = struct.unpack_from("<I", v, 4)
        pos = 8
        for _ in range(t):  # walk the table to find its end
            if pos + 2 > len(v):
                msg = "truncated tag table"
                raise CodecError(msg)
            (pl,) = struct.unpack_from("<H", v, pos)
            pos += 2 + pl
            if pos + 2 > len(v):
                msg = "truncated tag table"
                raise CodecError(msg)
            (ul,) = struct.unpack_from("<H", v, pos)
            pos += 2 + ul
        refs = self._table(v[4:pos])
        if pos + 4 > len(v):
            msg = "truncated point count"
            raise CodecError(msg)
        (n,) = struct.unpack_from("<I", v, pos)
        pos += 4
        end = pos + 21 * n
        if end + 1 > len(v):
            msg = f"{len(v)} bytes cannot hold {n} points"
            raise CodecError(msg)
        idx = np.frombuffer(v, "<u4", n, pos)
        if n and int(idx.max()) >= len(refs):
            msg = "tag index out of range"
            raise CodecError(msg)
        ts = np.frombuffer(v, "<i8", n, pos + 4 * n)
        val = np.frombuffer(v, "<f8", n, pos + 12 * n)
        q = np.frombuffer(v, np.uint8, n, pos + 20 * n)
        mask = v[end]
        present = [f for k, f in enumerate(POINT_FLAGS) if mask >> k & 1]
        if len(v) != end + 1 + n * len(present):
            msg = f"{len(v)} bytes do not match {n} points and flags {present}"
            raise CodecError(msg)
        flags = {
            f: np.frombuffer(v, np.uint8, n, end + 1 + k * n).astype(np.bool_)
            for k, f in enumerate(present)
        }
        return _Part(i, refs, idx, ts, val, q, flags)

    def _v1(self, i: int, k: bytes | None, v: bytes) -> _Part:
        if not k:
            msg = "message has no key (tag path)"
            raise CodecError(msg)
        if len(v) < 10:
            msg = "truncated header"
            raise CodecError(msg)
        ulen = v[4] | v[5] << 8
        hdr = 10 + ulen
        if len(v) < hdr:
            msg = "truncated header"
            raise CodecError(msg)
        n = int.from_bytes(v[6 + ulen : hdr], "little")
        if len(v) != hdr + 17 * n:
            msg = f"binary payload of {len(v)} bytes does not hold {n} points"
            raise CodecError(msg)
        ref = TagRef(k.decode(), v[6 : 6 + ulen].decode())
        return _Part(
            i,
            [self._id(ref)],
            np.zeros(n, np.uint32),
            np.frombuffer(v, "<i8", n, hdr),
            np.frombuffer(v, "<f8", n, hdr + 8 * n),
            np.frombuffer(v, np.uint8, n, hdr + 16 * n),
            {},
        )

    def _json(self, i: int, k: bytes | None, v: bytes) -> _Part:
        d = orjson.loads(v)
        if not isinstance(d, dict):
            msg = "JSON payload is not an object"
            raise CodecError(msg)
        if "tags" in d:  # the batch form
            refs = [self._id(TagRef(str(p), str(u))) for p, u in d["tags"]]
            idx = np.asarray(d["tag_idx"], np.int64)
        else:  # the single-tag form of the first version
            path = d.get("path") or (k.decode() if k else None)
            if not path:
                msg = "message has no tag path"
                raise CodecError(msg)
            refs = [self._id(TagRef(str(path), str(d.get("unit", ""))))]
            idx = np.zeros(len(d["ts_ms"]), np.int64)
        ts = np.asarray(d["ts_ms"], np.int64)
        val = np.asarray(d["value"], np.float64)
        q = np.asarray(d.get("quality", [0] * len(ts)), np.uint8)
        if not len(idx) == len(ts) == len(val) == len(q):
            msg = "JSON payload columns differ in length"
            raise CodecError(msg)
        if len(idx) and (int(idx.min()) < 0 or int(idx.max()) >= len(refs)):
            msg = "tag index out of range"
            raise CodecError(msg)
        flags = {f: np.asarray(d[f], np.bool_) for f in POINT_FLAGS if f in d}
        if any(len(a) != len(ts) for a in flags.values()):
            msg = "JSON payload flags differ in length"
            raise CodecError(msg)
        return _Part(i, refs, idx, ts, val, q, flags)

    def decode(self, keys: Sequence[bytes | None], values: Sequence[bytes | None]) -> Decoded:
        """Decode ``values[i]`` (key ``keys[i]``) for every ``i``; never raises."""
        parts: list[_Part] = []
        errors: list[tuple[int, str]] = []
        for i, (k, v) in enumerate(zip(keys, values, strict=True)):
            try:
                if not v:
                    msg = "message has no value"
                    raise CodecError(msg)
                if v[:4] == MAGIC:
                    part = self._v2(i, v)
                elif v[:4] == MAGIC_V1:
                    part = self._v1(i, k, v)
                else:
                    part = self._json(i, k, v)
                ts = part.ts
                if len(ts) and (int(ts.min()) < 0 or int(ts.max()) >= MAX_TS_MS):
                    msg = "a timestamp is outside 1970..2248"
                    raise CodecError(msg)
            except (
                CodecError,
                ValueError,
                KeyError,
                TypeError,
                IndexError,
                struct.error,
                UnicodeDecodeError,
                orjson.JSONDecodeError,
            ) as e:
                errors.append((i, f"undecodable points payload: {e}"))
                continue
            parts.append(part)
        empty_i = np.empty(0, np.int64)
        if not parts:
            empty_q = np.empty(0, np.uint8)
            return Decoded(self.tags, empty_i, empty_i, empty_i, np.empty(0), empty_q, {}, errors)
        idx = np.concatenate([np.asarray(p.refs, np.int64)[p.idx.astype(np.int64)] for p in parts])
        flags: dict[str, npt.NDArray[np.bool_]] = {}
        for f in POINT_FLAGS:
            if any(f in p.flags for p in parts):
                flags[f] = np.concatenate(
                    [p.flags.get(f, np.zeros(len(p.ts), np.bool_)) for p in parts]
                )
        return Decoded(
            tags=self.tags,
            tag_idx=idx,
            message=np.repeat(
                np.asarray([p.message for p in parts], np.int64), [len(p.ts) for p in parts]
            ),
            ts_ms=np.concatenate([p.ts for p in parts]).astype(np.int64),
            value=np.concatenate([p.val for p in parts]).astype(np.float64),
            quality=np.concatenate([p.q for p in parts]).astype(np.uint8),
            flags=flags,
            errors=errors,
        )


def encode_row(row: dict[str, Any]) -> bytes:
    """Encode a row (aggregate, event, KPI, dead letter) as compact JSON.

    Non-finite floats become ``null`` (JSON has no NaN); other types fall back to ``str``.
    """
    return orjson.dumps(row, default=str, option=orjson.OPT_SERIALIZE_NUMPY)
