"""A durable local spool: what a sink could not deliver yet, on disk, in order.

Records are appended by the worker (``append``), made durable at every epoch snapshot
(``sync``: flush + fsync) and read by the sink's delivery thread, which acknowledges what the
destination took (``ack``); fully delivered segments are deleted. The spool survives crashes:
on open, segments are scanned and a torn tail (a record cut by ``kill -9``) is cut off; on
resume from a snapshot, :meth:`truncate` drops the records appended after that snapshot (the
replay appends them again). Each record carries a sequence number (one more than the
previous) and the epoch it was appended in.

It is bounded by ``max_bytes`` and ``max_age_s``; when a bound is reached the ``overflow``
policy applies: ``drop_oldest`` (default: the oldest undelivered segment goes) or
``drop_newest`` (new records are refused). ``on_overflow(count, reason)`` is called each time.

Layout: ``<dir>/<first seq, 20 digits>.seg`` segments of records
``<u32 length><u32 crc32><i64 seq><i64 epoch><bytes>`` and ``<dir>/meta.json`` (the
acknowledged sequence number and anything the owner stores with :meth:`save_meta`).
"""

from __future__ import annotations

import json
import logging
import os
import struct
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

__all__ = ["Spool", "SpoolRecord"]

log = logging.getLogger(__name__)

_HEAD = struct.Struct("<IIqq")
SpoolOverflow = Literal["drop_oldest", "drop_newest"]


@dataclass(frozen=True, slots=True)
class SpoolRecord:
    """One spooled record."""

    seq: int
    epoch: int
    data: bytes


@dataclass
class _Segment:
    first: int
    path: Path
    last: int = -1  # seq of its last record (-1: empty)
    size: int = 0
    newest_wall: float = field(default_factory=time.time)


class Spool:
    """See the module docstring. One writer thread and one reader thread may use it."""

    def __init__(
        self,
        directory: Path,
        *,
        max_bytes: int = 10 * 1024**3,
        max_age_s: float = 86_400.0,
        overflow: SpoolOverflow = "drop_oldest",
        segment_bytes: int = 64 * 1024**2,
        on_overflow: Callable[[int, str], None] | None = None,
    ) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.max_bytes, self.max_age_s, self.overflow = max_bytes, max_age_s, overflow
        self.segment_bytes = segment_bytes
        self.on_overflow = on_overflow
        self._lock = threading.RLock()
        self._segments: list[_Segment] = []
        self._out: BinaryIO | None = None
        self.meta: dict[str, Any] = {}
        self._load_meta()
        self.acked = int(self.meta.get("acked", -1))
        self._scan()
        last = self._segments[-1].last if self._segments else -1
        self.written = max(last, self.acked)  # the last seq appended
        self.synced = self.written
        self.dropped = 0

    # -- opening -----------------------------------------------------------------------------
    def _load_meta(self) -> None:
        path = self.dir / "meta.json"
        if path.is_file():
            try:
                self.meta = json.loads(path.read_text())
            except ValueError:
                log.warning("spool %s: unreadable meta.json, starting from its segments", self.dir)

    def save_meta(self, **values: Any) -> None:
        """Store ``values`` (with the acknowledged position) durably in meta.json."""
        with self._lock:
            self.meta.update(values)
            self.meta["acked"] = self.acked
            tmp = self.dir / "meta.json.tmp"
            with tmp.open("w") as f:
                json.dump(self.meta, f)
                f.flush()
                os.fsync(f.fileno())
            tmp.replace(self.dir / "meta.json")

    def _scan(self) -> None:
        """Index the segments; cut a torn record off the end of the last one."""
        for path in sorted(self.dir.glob("*.seg")):
            seg = _Segment(int(path.stem), path)
            size = path.stat().st_size
            with path.open("rb") as f:
                pos = 0
                while pos + _HEAD.size <= size:
                    head = f.read(_HEAD.size)
                    length, crc, seq, _epoch = _HEAD.unpack(head)
                    data = f.read(length)
                    if len(data) != length or zlib.crc32(data) != crc:
                        break
                    seg.last = seq
                    pos += _HEAD.size + length
            if pos != size:
                log.warning("spool %s: cutting a torn record off %s at %d", self.dir, path, pos)
                with path.open("r+b") as f:
                    f.truncate(pos)
            seg.size = pos
            seg.newest_wall = path.stat().st_mtime
            if seg.last < 0 or seg.last <= self.acked:
                path.unlink()  # empty, or delivered entirely
                continue
            self._segments.append(seg)

    # -- writer --------------------------------------------------------------------------
    def append(self, data: bytes, epoch: int) -> int | None:
        """Append a record; return its seq (None: refused by ``drop_newest``)."""
        with self._lock:
            if self._over(len(data) + _HEAD.size):
                if self.overflow == "drop_newest":
                    self._dropped(1, "full: the newest record was refused")
                    return None
                self._drop_oldest()
            seq = self.written + 1
            seg = self._segments[-1] if self._segments else None
            if seg is None or seg.size >= self.segment_bytes or self._out is None:
                if seg is None or seg.size >= self.segment_bytes:
                    seg = _Segment(seq, self.dir / f"{seq:020d}.seg")
                    self._segments.append(seg)
                if self._out is not None:
                    # sync() only fsyncs the open segment: make the one left behind durable.
                    self._out.flush()
                    os.fsync(self._out.fileno())
                    self._out.close()
                self._out = seg.path.open("ab")
            self._out.write(_HEAD.pack(len(data), zlib.crc32(data), seq, epoch) + data)
            seg.last, seg.newest_wall = seq, time.time()
            seg.size += _HEAD.size + len(data)
            self.written = seq
            return seq

    def _over(self, extra: int) -> bool:
        if not self._segments:
            return False
        total = sum(s.size for s in self._segments) + extra
        aged = time.time() - self._segments[0].newest_wall > self.max_age_s
        return total > self.max_bytes or (aged and len(self._segments) > 1)

    def _drop_oldest(self) -> None:
        while self._over(0) and len(self._segments) > 1:
            seg = self._segments.pop(0)
            lost = seg.last - max(seg.first - 1, self.acked)
            seg.path.unlink(missing_ok=True)
            self.acked = max(self.acked, seg.last)
            self._dropped(lost, f"full or older than {self.max_age_s:g} s: the oldest segment went")

    def _dropped(self, count: int, why: str) -> None:
        self.dropped += count
        log.error("spool %s: %d undelivered records dropped (%s)", self.dir, count, why)
        if self.on_overflow is not None:
            self.on_overflow(count, why)

    def flush(self) -> None:
        """Hand appended records to the OS (readable by the delivery thread)."""
        with self._lock:
            if self._out is not None:
                self._out.flush()

    def sync(self) -> int:
        """Make everything appended durable; return the last seq appended."""
        with self._lock:
            written = self.written
            if self._out is None:
                self.synced = written
                return written
            self._out.flush()
            fd = os.dup(self._out.fileno())
        # fsync outside the lock: the writer keeps appending meanwhile (group commit).
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        with self._lock:
            self.synced = max(self.synced, written)
        return written

    def truncate(self, last_seq: int) -> int:
        """Drop every record after ``last_seq`` (a snapshot's position); return how many."""
        with self._lock:
            if self._out is not None:
                self._out.close()
                self._out = None
            dropped = 0
            for seg in list(reversed(self._segments)):
                if seg.first > last_seq:
                    dropped += seg.last - seg.first + 1
                    seg.path.unlink(missing_ok=True)
                    self._segments.remove(seg)
                    continue
                if seg.last > last_seq:
                    pos = 0
                    with seg.path.open("rb") as f:
                        while True:
                            head = f.read(_HEAD.size)
                            if len(head) < _HEAD.size:
                                break
                            length, _crc, seq, _epoch = _HEAD.unpack(head)
                            if seq > last_seq:
                                break
                            f.seek(length, os.SEEK_CUR)
                            pos += _HEAD.size + length
                    with seg.path.open("r+b") as f:
                        f.truncate(pos)
                    dropped += seg.last - last_seq
                    seg.last, seg.size = last_seq, pos
                break
            self.written = self.synced = max(last_seq, -1)
            # Records after the snapshot are appended again by the replay, with the same
            # seqs: what was acknowledged of them must be delivered again.
            self.acked = min(self.acked, last_seq)
            return dropped

    def close(self) -> None:
        """Sync and close the active segment."""
        with self._lock:
            if self._out is not None:
                self._out.flush()
                os.fsync(self._out.fileno())
                self._out.close()
                self._out = None

    # -- reader --------------------------------------------------------------------------
    def read(self, after: int, limit: int, *, upto: int | None = None) -> list[SpoolRecord]:
        """Return up to ``limit`` records with ``after < seq <= upto`` (default: written)."""
        with self._lock:
            if self._out is not None:
                self._out.flush()  # appended records become readable
            end = self.written if upto is None else min(upto, self.written)
            segs = [s for s in self._segments if s.last > after and s.first <= end]
        out: list[SpoolRecord] = []
        for seg in segs:
            try:
                f = seg.path.open("rb")
            except FileNotFoundError:
                continue  # dropped meanwhile (overflow)
            with f:
                while len(out) < limit:
                    head = f.read(_HEAD.size)
                    if len(head) < _HEAD.size:
                        break
                    length, crc, seq, epoch = _HEAD.unpack(head)
                    if seq > end:
                        return out
                    if seq <= after:
                        f.seek(length, os.SEEK_CUR)
                        continue
                    data = f.read(length)
                    if len(data) < length or zlib.crc32(data) != crc:
                        break  # being written: read again later
                    out.append(SpoolRecord(seq, epoch, data))
            if len(out) >= limit:
                break
        return out

    def ack(self, seq: int) -> None:
        """Acknowledge every record up to ``seq``; delete fully delivered segments."""
        with self._lock:
            self.acked = max(self.acked, seq)
            while len(self._segments) > 1 and self._segments[0].last <= self.acked:
                self._segments.pop(0).path.unlink(missing_ok=True)

    def pending(self) -> int:
        """Return the number of records not yet acknowledged."""
        with self._lock:
            return max(0, self.written - self.acked)

    def size_bytes(self) -> int:
        """Return the bytes on disk."""
        with self._lock:
            return sum(s.size for s in self._segments)
