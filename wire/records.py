"""The canonical records every package shares, and the time helpers they use.

- :class:`Point`: one sample of one tag with ISA-95 context (protocol edges, raw sinks);
- :class:`PointBatch`: many numeric points as numpy columns, the unit of the hot path;
- :class:`DeadLetter`: input that could not be processed, with the reason;
- :class:`Event`: something a rule noticed (anomaly, alarm, stale, source state, ...);
- :class:`Kpi`: one KPI value of a window;
- :class:`WindowAggregates`: closed-window statistics of many tags in columnar form.

All times are epoch milliseconds in UTC; only aware datetimes are accepted at the edges.
"""

from __future__ import annotations

import enum
import fnmatch
import itertools
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt

from wire.errors import RecordError

__all__ = [
    "FINAL_ALL_MS",
    "ISA95_LEVELS",
    "POINT_FLAGS",
    "POWER_UNITS",
    "DeadLetter",
    "Event",
    "Isa95",
    "Kpi",
    "Point",
    "PointBatch",
    "Quality",
    "TagRef",
    "TagTable",
    "TextPoints",
    "Value",
    "WindowAggregates",
    "coerce_points",
    "tag_matches",
    "ms_to_datetime",
    "ms_to_iso",
    "shard_of",
    "now_ms",
    "to_ms",
    "window_label",
]

Value = float | bool | str

ISA95_LEVELS = ("enterprise", "site", "area", "line", "machine")


class Quality(enum.IntEnum):
    """OPC-style data quality of a sample; numeric values are stored in batches."""

    GOOD = 0
    UNCERTAIN = 1
    BAD = 2

    @classmethod
    def parse(cls, raw: object) -> Quality:
        """Return the quality named by ``raw`` (name, int value or Quality)."""
        if isinstance(raw, Quality):
            return raw
        if isinstance(raw, str):
            try:
                return cls[raw.strip().upper()]
            except KeyError as e:
                msg = f"unknown quality {raw!r}: expected one of GOOD, UNCERTAIN, BAD"
                raise RecordError(msg) from e
        if isinstance(raw, int) and not isinstance(raw, bool):
            try:
                return cls(raw)
            except ValueError as e:
                msg = f"unknown quality value {raw!r}: expected 0, 1 or 2"
                raise RecordError(msg) from e
        msg = f"quality must be a name or int, got {type(raw).__name__}"
        raise RecordError(msg)


def now_ms() -> int:
    """Return the current UTC time in epoch milliseconds."""
    return time.time_ns() // 1_000_000


def to_ms(ts: datetime | int | float | str) -> int:
    """Convert an aware datetime, epoch ms or ISO-8601 string with offset to epoch ms.

    Naive datetimes and strings without an offset are refused: a device clock in local time
    without a zone silently shifts every window by hours.
    """
    if isinstance(ts, bool):
        msg = "timestamp must not be a bool"
        raise RecordError(msg)
    if isinstance(ts, int):
        return ts
    if isinstance(ts, float):
        if not math.isfinite(ts):
            msg = f"timestamp must be finite, got {ts!r}"
            raise RecordError(msg)
        return round(ts)
    if isinstance(ts, str):
        try:
            ts = datetime.fromisoformat(ts.replace("Z", "+00:00"))
        except ValueError as e:
            msg = f"timestamp {ts!r} is not ISO-8601"
            raise RecordError(msg) from e
    if ts.tzinfo is None or ts.utcoffset() is None:
        msg = f"timestamp {ts.isoformat()} has no timezone; only aware UTC times are accepted"
        raise RecordError(msg)
    return round(ts.timestamp() * 1000)


def ms_to_datetime(ms: int) -> datetime:
    """Return the aware UTC datetime for epoch milliseconds."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def shard_of(path: str, levels: int) -> str:
    """Return the shard of a tag path: its first ``levels`` levels (2: ``enterprise/site``)."""
    return "/".join(path.split("/", levels)[:levels])


def ms_to_iso(ms: int) -> str:
    """Return ``YYYY-MM-DDTHH:MM:SS.mmmZ`` for epoch milliseconds."""
    return ms_to_datetime(ms).isoformat(timespec="milliseconds")[:-6] + "Z"


@dataclass(frozen=True, slots=True)
class Isa95:
    """ISA-95 equipment hierarchy of a tag: enterprise/site/area/line/machine."""

    enterprise: str
    site: str
    area: str
    line: str
    machine: str

    def __post_init__(self) -> None:
        for level in ISA95_LEVELS:
            part = getattr(self, level)
            if not isinstance(part, str) or not part or "/" in part or part != part.strip():
                msg = (
                    f"ISA-95 {level} must be a non-empty string without '/' or surrounding "
                    f"spaces, got {part!r}"
                )
                raise RecordError(msg)

    @property
    def path(self) -> str:
        """Return ``enterprise/site/area/line/machine``."""
        return "/".join((self.enterprise, self.site, self.area, self.line, self.machine))


@dataclass(frozen=True, slots=True)
class TagRef:
    """A fully qualified tag: ISA-95 path plus tag name and engineering unit.

    ``path`` is ``enterprise/site/area/line/machine/tag``; it is the natural key of a time
    series everywhere (Kafka message key, database key, aggregation key).
    """

    path: str
    unit: str = ""

    @classmethod
    def of(cls, context: Isa95, tag: str, unit: str = "") -> TagRef:
        """Build the reference of ``tag`` under ``context``."""
        if not tag or "/" in tag:
            msg = f"tag name must be non-empty and contain no '/', got {tag!r}"
            raise RecordError(msg)
        return cls(f"{context.path}/{tag}", unit)

    @property
    def context(self) -> Isa95:
        """Return the ISA-95 context parsed from the path."""
        parts = self.path.split("/")
        if len(parts) != len(ISA95_LEVELS) + 1:
            msg = f"tag path {self.path!r} must have 6 parts: {'/'.join(ISA95_LEVELS)}/tag"
            raise RecordError(msg)
        return Isa95(*parts[:5])

    @property
    def tag(self) -> str:
        """Return the tag name (last path part)."""
        return self.path.rsplit("/", 1)[-1]


@dataclass(frozen=True, slots=True)
class Point:
    """One sample of one tag, at a UTC millisecond timestamp."""

    ts_ms: int
    context: Isa95
    tag: str
    value: Value
    unit: str = ""
    quality: Quality = Quality.GOOD
    source: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.ts_ms, int) or isinstance(self.ts_ms, bool):
            msg = f"ts_ms must be int epoch milliseconds, got {self.ts_ms!r}"
            raise RecordError(msg)
        if not isinstance(self.value, float | bool | str | int):
            msg = f"value of {self.tag!r} must be float, bool or str, got {type(self.value)}"
            raise RecordError(msg)
        if isinstance(self.value, int) and not isinstance(self.value, bool):
            object.__setattr__(self, "value", float(self.value))
        if not isinstance(self.quality, Quality):
            object.__setattr__(self, "quality", Quality.parse(self.quality))
        if not self.tag or "/" in self.tag:
            msg = f"tag name must be non-empty and contain no '/', got {self.tag!r}"
            raise RecordError(msg)

    @property
    def ref(self) -> TagRef:
        """Return the tag reference (path + unit)."""
        return TagRef(f"{self.context.path}/{self.tag}", self.unit)

    @property
    def path(self) -> str:
        """Return the full tag path ``enterprise/site/area/line/machine/tag``."""
        return f"{self.context.path}/{self.tag}"

    @property
    def is_numeric(self) -> bool:
        """True when the value can ride in a numeric batch (float or bool)."""
        return not isinstance(self.value, str)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-friendly dict (the documented JSON wire form)."""
        return {
            "ts": ms_to_iso(self.ts_ms),
            "ts_ms": self.ts_ms,
            "path": self.path,
            **{level: getattr(self.context, level) for level in ISA95_LEVELS},
            "tag": self.tag,
            "value": self.value,
            "unit": self.unit,
            "quality": self.quality.name,
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Point:
        """Parse the JSON wire form; raises :class:`RecordError` naming the bad field."""
        try:
            ctx = Isa95(*(str(d[level]) for level in ISA95_LEVELS))
            ts = d["ts_ms"] if "ts_ms" in d else to_ms(d["ts"])
            return cls(
                ts_ms=int(ts),
                context=ctx,
                tag=str(d["tag"]),
                value=d["value"],
                unit=str(d.get("unit", "")),
                quality=Quality.parse(d.get("quality", "GOOD")),
                source=str(d.get("source", "")),
            )
        except KeyError as e:
            msg = f"point is missing field {e.args[0]!r}"
            raise RecordError(msg) from e


def _as_array(values: Any, dtype: npt.DTypeLike) -> npt.NDArray[Any]:
    arr = np.asarray(values, dtype=dtype)
    if arr.ndim != 1:
        msg = f"batch columns must be 1-D, got shape {arr.shape}"
        raise RecordError(msg)
    return arr


@dataclass(frozen=True, slots=True, eq=False)
class PointBatch:
    """Many numeric points as columns; the unit of work on the hot path.

    ``tags`` is a small table of the distinct tags in the batch; ``tag_idx[i]`` indexes it for
    point ``i``. Bool values are stored as 0.0/1.0. ``received_ms`` is when the edge received
    the batch; validation measures clock skew against it (not the wall clock) so that a replay
    of recorded data is judged exactly as it was live. A batch merged from batches received at
    different times carries the per-point receive times in ``extra["received_ms"]`` (and
    ``received_ms`` is the newest). Array entries of ``extra`` with one value per point follow
    the points through :meth:`select`.
    """

    tags: tuple[TagRef, ...]
    tag_idx: npt.NDArray[np.int32]
    ts_ms: npt.NDArray[np.int64]
    value: npt.NDArray[np.float64]
    quality: npt.NDArray[np.uint8]
    source: str = ""
    received_ms: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tag_idx", _as_array(self.tag_idx, np.int32))
        object.__setattr__(self, "ts_ms", _as_array(self.ts_ms, np.int64))
        object.__setattr__(self, "value", _as_array(self.value, np.float64))
        object.__setattr__(self, "quality", _as_array(self.quality, np.uint8))
        n = len(self.ts_ms)
        if not (len(self.tag_idx) == len(self.value) == len(self.quality) == n):
            msg = (
                f"batch columns differ in length: tag_idx={len(self.tag_idx)} ts_ms={n} "
                f"value={len(self.value)} quality={len(self.quality)}"
            )
            raise RecordError(msg)
        if n and (int(self.tag_idx.min()) < 0 or int(self.tag_idx.max()) >= len(self.tags)):
            msg = f"tag_idx out of range for a table of {len(self.tags)} tags"
            raise RecordError(msg)

    def __len__(self) -> int:
        return len(self.ts_ms)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # A batch crosses workers and processes pickled (bytewax's exchange): send its tag
        # table as plain strings, and let the receiver reuse a table it already holds.
        table = (tuple(t.path for t in self.tags), tuple(t.unit for t in self.tags))
        columns = (self.tag_idx, self.ts_ms, self.value, self.quality)
        return _unpickle_batch, (table, columns, self.source, self.received_ms, self.extra)

    @classmethod
    def empty(cls, *, source: str = "", received_ms: int = 0) -> PointBatch:
        """Return a batch with no points."""
        return cls(
            (),
            np.empty(0, np.int32),
            np.empty(0, np.int64),
            np.empty(0, np.float64),
            np.empty(0, np.uint8),
            source=source,
            received_ms=received_ms,
        )

    @classmethod
    def from_points(
        cls, points: Iterable[Point], *, source: str = "", received_ms: int | None = None
    ) -> tuple[PointBatch, list[Point]]:
        """Columnarise numeric points; returns ``(batch, non_numeric_points)``.

        String-valued points (states, modes) cannot be aggregated numerically, so they are
        handed back for the raw outputs instead of being forced into the batch.
        """
        table: dict[TagRef, int] = {}
        idx: list[int] = []
        ts: list[int] = []
        val: list[float] = []
        qual: list[int] = []
        others: list[Point] = []
        for p in points:
            if not p.is_numeric:
                others.append(p)
                continue
            ref = p.ref
            i = table.get(ref)
            if i is None:
                i = table[ref] = len(table)
            idx.append(i)
            ts.append(p.ts_ms)
            val.append(float(p.value))
            qual.append(int(p.quality))
        batch = cls(
            tuple(table),
            np.asarray(idx, np.int32),
            np.asarray(ts, np.int64),
            np.asarray(val, np.float64),
            np.asarray(qual, np.uint8),
            source=source,
            received_ms=now_ms() if received_ms is None else received_ms,
        )
        return batch, others

    def to_points(self) -> list[Point]:
        """Expand to per-point objects (for edges and tests, not the hot path)."""
        ctxs = [t.context for t in self.tags]
        names = [t.tag for t in self.tags]
        return [
            Point(
                ts_ms=int(t),
                context=ctxs[i],
                tag=names[i],
                value=float(v),
                unit=self.tags[i].unit,
                quality=Quality(int(q)),
                source=self.source,
            )
            for i, t, v, q in zip(
                self.tag_idx.tolist(),
                self.ts_ms.tolist(),
                self.value.tolist(),
                self.quality.tolist(),
                strict=True,
            )
        ]

    def live(self) -> npt.NDArray[np.bool_] | None:
        """Mask of points that are live values (not historical backfill), or None if all are.

        Live rules (alarms, anomaly windows) judge the present: a historical value
        (Sparkplug ``is_historical``) is stored and aggregated but never raises an alarm.
        """
        historical: npt.NDArray[np.bool_] | None = self.extra.get("historical")
        return None if historical is None else ~historical

    def received_at(self) -> npt.NDArray[np.int64] | int:
        """Return the receive time of each point (an array) or of all points (an int)."""
        per_point: npt.NDArray[np.int64] | None = self.extra.get("received_ms")
        return self.received_ms if per_point is None else per_point

    def select(self, mask: npt.NDArray[np.bool_]) -> PointBatch:
        """Return the points where ``mask`` is true, sharing the tag table."""
        n = len(self)
        extra = {
            k: v[mask] if isinstance(v, np.ndarray) and len(v) == n else v
            for k, v in self.extra.items()
        }
        return PointBatch(
            self.tags,
            self.tag_idx[mask],
            self.ts_ms[mask],
            self.value[mask],
            self.quality[mask],
            source=self.source,
            received_ms=self.received_ms,
            extra=extra,
        )

    def with_meta(
        self, *, source: str, received_ms: int, extra: dict[str, Any] | None = None
    ) -> PointBatch:
        """Return the same points with another source, receive time and extras."""
        return PointBatch(
            self.tags,
            self.tag_idx,
            self.ts_ms,
            self.value,
            self.quality,
            source=source,
            received_ms=received_ms,
            extra=self.extra if extra is None else extra,
        )

    def with_tags(self, tags: tuple[TagRef, ...], tag_idx: npt.NDArray[np.int32]) -> PointBatch:
        """Return the same points indexed into another tag table."""
        return PointBatch(
            tags,
            tag_idx.astype(np.int32, copy=False),
            self.ts_ms,
            self.value,
            self.quality,
            source=self.source,
            received_ms=self.received_ms,
            extra=self.extra,
        )

    def with_values(
        self,
        value: npt.NDArray[np.float64],
        *,
        tags: tuple[TagRef, ...] | None = None,
        quality: npt.NDArray[np.uint8] | None = None,
    ) -> PointBatch:
        """Return a copy with replaced values (and optionally tag table or quality)."""
        return PointBatch(
            self.tags if tags is None else tags,
            self.tag_idx,
            self.ts_ms,
            value,
            self.quality if quality is None else quality,
            source=self.source,
            received_ms=self.received_ms,
            extra=self.extra,
        )

    @staticmethod
    def concat(batches: Sequence[PointBatch]) -> PointBatch:
        """Merge batches into one with a unified tag table."""
        batches = [b for b in batches if len(b)]
        if not batches:
            return PointBatch.empty()
        if len(batches) == 1:
            return batches[0]
        extra = _concat_extras(batches)
        if all(b.tags is batches[0].tags for b in batches):
            # Same table (one source): keep its identity so operators' table caches hit.
            return PointBatch(
                batches[0].tags,
                np.concatenate([b.tag_idx for b in batches]),
                np.concatenate([b.ts_ms for b in batches]),
                np.concatenate([b.value for b in batches]),
                np.concatenate([b.quality for b in batches]),
                source=batches[0].source,
                received_ms=max(b.received_ms for b in batches),
                extra=extra,
            )
        table: dict[TagRef, int] = {}
        idx_parts = []
        for b in batches:
            lut = np.fromiter(
                (table.setdefault(t, len(table)) for t in b.tags), np.int32, len(b.tags)
            )
            idx_parts.append(lut[b.tag_idx])
        return PointBatch(
            tuple(table),
            np.concatenate(idx_parts),
            np.concatenate([b.ts_ms for b in batches]),
            np.concatenate([b.value for b in batches]),
            np.concatenate([b.quality for b in batches]),
            source=batches[0].source,
            received_ms=max(b.received_ms for b in batches),
            extra=extra,
        )


# Per-point extras that every batch implicitly has: what a batch without the column means.
POINT_FLAGS = ("historical", "transient")


def _concat_extras(batches: Sequence[PointBatch]) -> dict[str, Any]:
    """Concatenate per-point extras; a batch without one gets its implicit value."""
    extra: dict[str, Any] = {}
    if any("received_ms" in b.extra for b in batches) or any(
        b.received_ms != batches[0].received_ms for b in batches
    ):
        extra["received_ms"] = np.concatenate(
            [np.broadcast_to(np.asarray(b.received_at(), np.int64), len(b)) for b in batches]
        )
    for flag in POINT_FLAGS:
        if any(flag in b.extra for b in batches):
            extra[flag] = np.concatenate(
                [b.extra.get(flag, np.zeros(len(b), np.bool_)) for b in batches]
            )
    return extra


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Input that could not be processed, with the reason and the raw payload.

    Nothing is dropped silently: every rejected point, malformed payload or late sample ends up
    as one of these on the dead-letter stream.
    """

    stage: str
    reason: str
    payload: Any
    ts_ms: int = field(default_factory=now_ms)
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-friendly dict; bytes payloads are hex-encoded."""
        payload = self.payload
        if isinstance(payload, bytes | bytearray):
            payload = {"hex": bytes(payload).hex()}
        elif isinstance(payload, Point):
            payload = payload.to_dict()
        return {
            "ts": ms_to_iso(self.ts_ms),
            "stage": self.stage,
            "reason": self.reason,
            "source": self.source,
            "payload": payload,
        }


@dataclass(frozen=True, slots=True)
class TextPoints:
    """Text-valued samples (modes, states, recipe names): they cannot ride in a numeric batch."""

    points: tuple[Point, ...]

    def __len__(self) -> int:
        return len(self.points)

    def rows(self) -> list[dict[str, Any]]:
        """Return one JSON-friendly dict per point."""
        return [p.to_dict() for p in self.points]


@dataclass(frozen=True, slots=True)
class Event:
    """Something a rule noticed about a tag (or a component) at a time.

    ``kind`` is ``anomaly``, ``alarm``, ``stale``, ``kpi``, ``score``, ``source`` ...; ``rule``
    is the id of the rule (or component) that fired; ``state`` is ``raised``/``cleared`` for
    stateful conditions. The natural key is ``(kind, rule, path, ts_ms)``.
    """

    kind: str
    rule: str
    path: str
    ts_ms: int
    severity: str = "info"
    state: str = ""
    message: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-friendly dict."""
        return {
            "ts": ms_to_iso(self.ts_ms),
            "ts_ms": self.ts_ms,
            "kind": self.kind,
            "rule": self.rule,
            "path": self.path,
            "severity": self.severity,
            "state": self.state,
            "message": self.message,
            "details": self.details,
        }


@dataclass(frozen=True, slots=True)
class Kpi:
    """One KPI value; natural key ``(path, name, window_ms, start_ms)``."""

    path: str
    name: str
    window_ms: int
    start_ms: int
    value: float
    unit: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-friendly dict."""
        return {
            "path": self.path,
            "name": self.name,
            "window_ms": self.window_ms,
            "start": ms_to_iso(self.start_ms),
            "start_ms": self.start_ms,
            "value": self.value,
            "unit": self.unit,
            "details": self.details,
        }


# Power units whose time integral is energy: unit -> energy unit.
FINAL_ALL_MS = 1 << 62
"""``WindowAggregates.final_before_ms`` at end of input: every window is final."""

POWER_UNITS: dict[str, str] = {"W": "Wh", "kW": "kWh", "MW": "MWh", "VA": "VAh", "kVA": "kVAh"}
_MS_PER_HOUR = 3_600_000.0

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


def window_label(window_ms: int) -> str:
    """Return a short label such as ``1m``, ``15m``, ``1h``, ``1d`` or ``30s``."""
    for unit_ms, suffix in ((86_400_000, "d"), (3_600_000, "h"), (60_000, "m"), (1000, "s")):
        if window_ms % unit_ms == 0:
            return f"{window_ms // unit_ms}{suffix}"
    return f"{window_ms}ms"


@dataclass(frozen=True, slots=True, eq=False)
class WindowAggregates:
    """Closed-window results in columnar form: one row per tag of one window.

    The natural key of a row is ``(path, window_ms, start_ms)``; a re-emitted window carries
    the same key, so sinks upsert on it.
    """

    window_ms: int
    start_ms: int
    tags: tuple[TagRef, ...]
    count: I64
    min: F64
    max: F64
    mean: F64
    std: F64
    sum: F64
    first: F64
    last: F64
    first_ts: I64
    last_ts: I64
    twa: F64
    integral: F64
    closed_by: str = "watermark"
    revision: int = 0
    end: int | None = None  # the end when not start + window_ms (a local day of 23 or 25 h)
    zone: str | None = None  # IANA zone of the site: rows also carry local start and end
    # Windows of this shard ending at or before this are final (None: no such knowledge, as
    # from a window built by hand; readers then take each window as final).
    final_before_ms: int | None = None
    # A block of several windows of one size (a history replay closes thousands at once):
    # the start of each row's window, rows in window order; None when every row is at
    # ``start_ms``. A block has ``end`` None and one ``revision`` and ``closed_by``.
    starts: I64 | None = None

    def __len__(self) -> int:
        return len(self.tags)

    @property
    def label(self) -> str:
        """Return the window label, e.g. ``1m``."""
        return window_label(self.window_ms)

    def windows(self) -> list[WindowAggregates]:
        """Return the windows of a block one by one (``[self]`` for a single window)."""
        if self.starts is None:
            return [self]
        starts = self.starts
        cuts = np.flatnonzero(starts[1:] != starts[:-1]) + 1
        bounds = [0, *cuts.tolist(), len(starts)]
        cols = {
            name: getattr(self, name)
            for name in (
                "count", "min", "max", "mean", "std", "sum", "first", "last",
                "first_ts", "last_ts", "twa", "integral",
            )
        }  # fmt: skip
        return [
            WindowAggregates(
                window_ms=self.window_ms,
                start_ms=int(starts[a]),
                tags=self.tags[a:b],
                **{name: col[a:b] for name, col in cols.items()},
                closed_by=self.closed_by,
                revision=self.revision,
                zone=self.zone,
                final_before_ms=self.final_before_ms,
            )
            for a, b in itertools.pairwise(bounds)
        ]

    def rows(self) -> list[dict[str, Any]]:
        """Return one JSON-friendly dict per tag and window (edge form for sinks)."""
        if self.starts is not None:
            return [row for w in self.windows() for row in w.rows()]
        label = self.label
        start_iso = ms_to_iso(self.start_ms)
        end_ms = self.start_ms + self.window_ms if self.end is None else self.end
        local: dict[str, str] = {}
        if self.zone is not None:
            zone = ZoneInfo(self.zone)
            local = {
                "start_local": ms_to_datetime(self.start_ms).astimezone(zone).isoformat(),
                "end_local": ms_to_datetime(end_ms).astimezone(zone).isoformat(),
            }
        cols = {
            name: getattr(self, name).tolist()
            for name in ("count", "min", "max", "mean", "std", "sum", "first", "last", "twa")
        }
        integral = self.integral.tolist()
        out = []
        for i, ref in enumerate(self.tags):
            parts = ref.path.split("/")
            energy_unit = POWER_UNITS.get(ref.unit)
            row: dict[str, Any] = {
                "window": label,
                "window_ms": self.window_ms,
                "start": start_iso,
                "start_ms": self.start_ms,
                "end_ms": end_ms,
                **local,
                "path": ref.path,
                **dict(zip(ISA95_LEVELS, parts[:5], strict=True)),
                "tag": parts[5] if len(parts) > 5 else ref.path,
                "unit": ref.unit,
            }
            for name, col in cols.items():
                row[name] = col[i]
            row["energy"] = integral[i] / _MS_PER_HOUR if energy_unit else None
            row["energy_unit"] = energy_unit
            row["closed_by"] = self.closed_by
            row["revision"] = self.revision
            out.append(row)
        return out


class TagTable:
    """Interns tag references so consecutive batches share one tag-table tuple.

    Sources that decode one sample at a time collect ``(path, unit, ts_ms, value, quality)``
    tuples and turn them into a batch with :meth:`batch`.
    """

    def __init__(self) -> None:
        self._index: dict[TagRef, int] = {}
        self.tags: tuple[TagRef, ...] = ()

    def index(self, ref: TagRef) -> int:
        """Return the table index of ``ref``, growing the table (a new tuple) if needed."""
        i = self._index.get(ref)
        if i is None:
            i = self._index[ref] = len(self.tags)
            self.tags = (*self.tags, ref)
        return i

    def batch(
        self,
        samples: Sequence[tuple[Any, ...]],
        *,
        source: str,
        received_ms: int,
        flags: dict[str, list[bool]] | None = None,
    ) -> PointBatch:
        """Columnarise ``(path, unit, ts_ms, value, quality, ...)`` samples against this table.

        ``flags`` (e.g. ``historical``) become per-point boolean extras when any is set.
        """
        # Samples of one batch mostly repeat a few tags: resolve each (path, unit) once.
        known: dict[tuple[str, str], int] = {}
        idx = []
        for s in samples:
            key = (s[0], s[1])
            i = known.get(key)
            if i is None:
                i = known[key] = self.index(TagRef(s[0], s[1]))
            idx.append(i)
        extra = {
            name: np.asarray(values, np.bool_)
            for name, values in (flags or {}).items()
            if any(values)
        }
        return PointBatch(
            self.tags,
            np.asarray(idx, np.int32),
            np.asarray([s[2] for s in samples], np.int64),
            np.asarray([s[3] for s in samples], np.float64),
            np.asarray([s[4] for s in samples], np.uint8),
            source=source,
            received_ms=received_ms,
            extra=extra,
        )


def tag_matches(pattern: str, ref: TagRef) -> bool:
    """Match a glob against the full path, or against the tag name alone if no '/' in it."""
    target = ref.path if "/" in pattern else ref.tag
    return fnmatch.fnmatchcase(target, pattern)


def coerce_points(
    points: list[Point], *, text_tags: str | None = None, source: str = "", stage: str = "coerce"
) -> tuple[PointBatch, list[Point], list[DeadLetter]]:
    """Type coercion at the edge: numeric strings become floats, bools become 0/1.

    Returns ``(numeric batch, text points, dead letters)``. Tags matching ``text_tags`` keep
    their string values (states, modes) and travel as text points; any other string that is
    not a number (e.g. ``"12,5"`` or ``"n/a"``) is rejected with the reason.
    """
    numeric: list[Point] = []
    text: list[Point] = []
    dead: list[DeadLetter] = []
    for p in points:
        if not isinstance(p.value, str):
            numeric.append(p)
            continue
        if text_tags is not None and tag_matches(text_tags, p.ref):
            text.append(p)
            continue
        try:
            value = float(p.value.strip())
        except ValueError:
            reason = f"type: {p.path} value {p.value!r} is not a number"
            dead.append(DeadLetter(stage, reason, p.to_dict(), source=p.source or source))
            continue
        numeric.append(replace(p, value=value))
    batch, _ = PointBatch.from_points(numeric, source=source)
    return batch, text, dead


_TABLES: dict[tuple[tuple[str, ...], tuple[str, ...]], tuple[TagRef, ...]] = {}


def _unpickle_batch(
    table: tuple[tuple[str, ...], tuple[str, ...]],
    columns: tuple[Any, Any, Any, Any],
    source: str,
    received_ms: int,
    extra: dict[str, Any],
) -> PointBatch:
    """Rebuild a pickled :class:`PointBatch`; equal tag tables come back as one object.

    Operators cache per tag table; a received table that keeps its identity keeps them warm.
    """
    tags = _TABLES.get(table)
    if tags is None:
        if len(_TABLES) >= 4096:
            _TABLES.clear()
        tags = _TABLES[table] = tuple(TagRef(path, unit) for path, unit in zip(*table, strict=True))
    return PointBatch(tags, *columns, source=source, received_ms=received_ms, extra=extra)
