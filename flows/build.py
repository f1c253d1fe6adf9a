"""Build a Bytewax dataflow from a site config: one loop over the site's entries.

Every input, operator and sink is a registered component (:mod:`flows.registry`); this module
knows none of them. :func:`build_flow` creates a :class:`Build` context, lets each input add
its source, keys the points by shard, runs each operator's ``build`` in config order and then
each sink's. Components talk to the context only: ``b.points`` is the keyed stream of point
batches, ``b.add(name, stream)`` contributes to a named stream, ``b.stream(name, step)`` is
everything contributed to it so far, merged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, cast

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream
from bytewax.inputs import Source
from bytewax.operators import KeyedStream
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from prometheus_client import Counter
from typing_extensions import override

from flows import system
from flows.config import SiteBase
from flows.errors import ConfigError
from flows.metrics import (
    INPUT_DECODE_ERRORS,
    INPUT_EVENT_LAG,
    INPUT_MESSAGES,
    INPUT_POINTS,
    OPERATOR_IN,
    OPERATOR_OUT,
    REEMITTED,
    WINDOWS,
    count_dead_letter,
    count_late,
    register_check,
    reset_checks,
)
from flows.registry import Kind, component, load_components
from flows.streams import rows_of
from wire.errors import EdgeflowError
from wire.records import (
    DeadLetter,
    Event,
    PointBatch,
    TextPoints,
    WindowAggregates,
    now_ms,
    shard_of,
)

__all__ = ["Build", "UnroutedSink", "build_flow", "key_by_shard", "shard_batches"]

log = logging.getLogger(__name__)


def shard_batches(batch: PointBatch, levels: int) -> list[tuple[str, PointBatch]]:
    """Split a batch by the first ``levels`` path levels of its tags: ``[(shard, batch)]``.

    State and watermarks are kept per shard, so a batch must never carry two shards (a Kafka
    batch may hold several sites). Each part carries only its own shard's tag table: a part
    that moves to another worker or process is pickled with it. The split is cached per table.
    """
    keys, of_tag, tables, local = _shard_plan(batch.tags, levels)
    if len(keys) == 1:
        return [(keys[0], batch)]
    if not len(batch):
        return []
    of_point = of_tag[batch.tag_idx]
    out = []
    for k, key in enumerate(keys):
        part = batch.select(of_point == k)
        if len(part):
            out.append((key, part.with_tags(tables[k], local[part.tag_idx])))
    return out


_Plan = tuple[list[str], Any, list[tuple[Any, ...]], Any]
_PLANS: dict[tuple[int, int], tuple[Any, _Plan]] = {}


def _shard_plan(tags: tuple[Any, ...], levels: int) -> _Plan:
    hit = _PLANS.get((id(tags), levels))
    if hit is not None and hit[0] is tags:
        return hit[1]
    import numpy as np

    keys: list[str] = []
    index: dict[str, int] = {}
    members: list[list[Any]] = []
    of_tag = np.empty(len(tags), np.int32)
    local = np.empty(len(tags), np.int32)
    for i, t in enumerate(tags):
        key = shard_of(t.path, levels)
        k = index.setdefault(key, len(keys))
        if k == len(keys):
            keys.append(key)
            members.append([])
        of_tag[i] = k
        local[i] = len(members[k])
        members[k].append(t)
    plan: _Plan = (keys or ["_"], of_tag, [tuple(m) for m in members], local)
    if len(_PLANS) > 256:
        _PLANS.clear()
    _PLANS[(id(tags), levels)] = (tags, plan)
    return plan


def key_by_shard(
    step_id: str, up: Stream[PointBatch], *, levels: int = 2
) -> KeyedStream[PointBatch]:
    """Split batches by shard (see :func:`shard_batches`) and key them by it."""
    # (shard, batch) pairs are a keyed stream as they are: no re-keying step needed.
    return cast(
        KeyedStream[PointBatch],
        op.flat_map(step_id, up, lambda batch: shard_batches(batch, levels)),
    )


class _UnroutedPartition(StatelessSinkPartition[Any]):
    def __init__(self, stream: str) -> None:
        self.stream = stream

    @override
    def write_batch(self, items: list[Any]) -> None:
        first = items[0]
        why = getattr(first, "reason", "")
        logging.getLogger("edgeflow.unrouted").warning(
            "%d %s item(s) and no sink subscribes to %r (add it to a sink's streams); first: %s",
            len(items),
            self.stream,
            self.stream,
            why or first,
        )


class UnroutedSink(DynamicSink[Any]):
    """Logs a warning for items of a stream no configured sink takes (e.g. dead letters).

    Rejected and late data must never vanish silently, even when a site forgot to route it.
    """

    def __init__(self, stream: str) -> None:
        self.stream = stream

    @override
    def build(self, step_id: str, worker_index: int, worker_count: int) -> _UnroutedPartition:
        return _UnroutedPartition(self.stream)


def _pair(name: str, item: Any) -> tuple[str, Any]:
    return (name, item)


def _rows_pairs(tagged: tuple[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    name, item = tagged
    return [(name, row) for row in rows_of(name, item)]


def _no_connection() -> tuple[bool, str]:
    return True, ""


def _count_input(input_id: str, _step: str, item: object) -> None:
    if isinstance(item, PointBatch):
        INPUT_MESSAGES.labels(input_id).inc()
        if len(item):
            INPUT_POINTS.labels(input_id).inc(len(item))
            INPUT_EVENT_LAG.labels(input_id).set(now_ms() / 1000 - int(item.ts_ms.max()) / 1000)
    elif isinstance(item, TextPoints):
        INPUT_POINTS.labels(input_id).inc(len(item.points))
    elif isinstance(item, DeadLetter):
        INPUT_DECODE_ERRORS.labels(input_id).inc()


def _count_points(counter: Counter, operator_id: str, _step: str, item: Any) -> None:
    counter.labels(operator_id).inc(len(item[1]))


def _count_dead_letter(_step: str, item: DeadLetter) -> None:
    count_dead_letter(item.stage, item.reason)


def _count_late(_step: str, item: DeadLetter) -> None:
    count_late(item.reason)


def _count_windows(_step: str, item: WindowAggregates) -> None:
    (REEMITTED if item.revision else WINDOWS).labels(item.label).inc(len(item))


def _is_batch(item: object) -> bool:
    return isinstance(item, PointBatch)


def _is_dead_letter(item: object) -> bool:
    return isinstance(item, DeadLetter)


def _is_text(item: object) -> bool:
    return isinstance(item, TextPoints)


@dataclass
class Build:
    """What components see while the flow is built; see the module docstring."""

    flow: Dataflow
    site: Any
    out_dir: Path | None = None
    name: str = "edge"
    _streams: dict[str, list[Stream[Any]]] = field(default_factory=dict)
    _points: KeyedStream[PointBatch] | None = None
    _merged: dict[tuple[str, int], Stream[Any]] = field(default_factory=dict)

    # -- inputs --------------------------------------------------------------------------
    def input(self, step_id: str, source: Source[Any]) -> None:
        """Add a source whose items are point batches, dead letters, events and text points."""
        # Ready unless the input's connections say otherwise (they replace this check).
        register_check("input", step_id, _no_connection)
        items = op.input(step_id, self.flow, system.track(source))
        items = op.inspect(f"{step_id}_metrics", items, partial(_count_input, step_id))
        split = op.branch(f"{step_id}_split", items, _is_batch)
        self.add("raw", cast(Stream[PointBatch], split.trues))
        rest = op.branch(f"{step_id}_rest", split.falses, _is_dead_letter)
        self.add("dead_letters", cast(Stream[DeadLetter], rest.trues))
        others = op.branch(f"{step_id}_texts", rest.falses, _is_text)
        self.add("texts", cast(Stream[TextPoints], others.trues))
        self.add("events", cast(Stream[Event], others.falses))

    @property
    def shard_levels(self) -> int:
        """How many leading path levels key operator state (the site's ``shard``)."""
        return int(self.site.site.shard_levels)

    # -- streams -------------------------------------------------------------------------
    @property
    def points(self) -> KeyedStream[PointBatch]:
        """The current keyed stream of point batches (key: the shard)."""
        if self._points is None:
            msg = "the points stream is not available before the inputs are built"
            raise ConfigError(msg)
        return self._points

    @points.setter
    def points(self, stream: KeyedStream[PointBatch]) -> None:
        self._points = stream

    def add(self, name: str, stream: Stream[Any]) -> Build:
        """Contribute ``stream`` to the named stream; returns the context (for chaining)."""
        self._streams.setdefault(name, []).append(stream)
        return self

    def has(self, name: str) -> bool:
        """Return True when something contributes to ``name``."""
        return (name == "points" and self._points is not None) or bool(self._streams.get(name))

    def stream(self, name: str, step_id: str) -> Stream[Any]:
        """Everything contributed to ``name`` so far, merged (``points`` unkeyed)."""
        if name == "points":
            key = (name, id(self._points))
            if key not in self._merged:
                self._merged[key] = op.key_rm(f"{step_id}_points_unkey", self.points)
            return self._merged[key]
        parts = self._streams.get(name, [])
        if not parts:
            msg = f"no component of this site emits the {name!r} stream"
            raise ConfigError(msg)
        if len(parts) == 1:
            return parts[0]
        key = (name, len(parts))
        if key not in self._merged:
            self._merged[key] = op.merge(f"{step_id}_{name}_merge", *parts)
        return self._merged[key]

    def rows(self, name: str, step_id: str) -> Stream[dict[str, Any]]:
        """Return the named stream as JSON-friendly rows (see :func:`flows.streams.rows_of`)."""

        def to_rows(item: Any) -> list[dict[str, Any]]:
            return rows_of(name, item)

        return op.flat_map(f"{step_id}_{name}_rows", self.stream(name, step_id), to_rows)

    def tagged(self, names: tuple[str, ...], step_id: str) -> Stream[tuple[str, Any]] | None:
        """Return the named streams merged into ``(name, item)`` pairs (None: none emitted)."""
        parts = [
            op.map(f"{step_id}_{name}_tag", self.stream(name, step_id), partial(_pair, name))
            for name in names
            if self.has(name)
        ]
        if not parts:
            return None
        return parts[0] if len(parts) == 1 else op.merge(f"{step_id}_all", *parts)

    def tagged_rows(
        self, names: tuple[str, ...], step_id: str
    ) -> Stream[tuple[str, dict[str, Any]]] | None:
        """Return the named streams as ``(name, row)`` pairs (None: none emitted)."""
        tagged = self.tagged(names, step_id)
        if tagged is None:
            return None
        return op.flat_map(f"{step_id}_rows", tagged, _rows_pairs)


def build_flow(site: SiteBase, *, out_dir: Path | None = None, name: str = "edge") -> Dataflow:
    """Build the dataflow for ``site``; a mistake found while building is a ConfigError."""
    load_components()
    b = Build(Dataflow(f"{name}_{site.name}"), site, out_dir, name)
    source = getattr(site, "source_file", None)

    def located(field_: str, fn: Callable[[], None]) -> None:
        try:
            fn()
        except ConfigError as e:
            raise e.at(file=source, field=field_) from None
        except (EdgeflowError, ValueError) as e:
            raise ConfigError(str(e), file=source, field=field_) from e

    def builder(kind: Kind, cfg: Any) -> Callable[[], None]:
        return lambda: component(kind, cfg.type).build(cfg, b)

    system.reset()
    reset_checks()
    inputs = getattr(site, "inputs", ())
    for i, inp in enumerate(inputs):
        located(f"inputs.{i}", builder("input", inp))
    # What components report from their own threads (connection states, spool overflows).
    posted = op.input("_system", b.flow, system.SystemSource())
    split = op.branch("_system_split", posted, _is_dead_letter)
    b.add("dead_letters", cast(Stream[DeadLetter], split.trues))
    b.add("events", cast(Stream[Event], split.falses))
    b.points = key_by_shard("shard", b.stream("raw", "inputs"), levels=site.site.shard_levels)
    for i, step in enumerate(getattr(site, "operators", ())):
        into = b.points
        located(f"operators.{i}", builder("operator", step))
        op.inspect(f"{step.id}_metrics_in", into, partial(_count_points, OPERATOR_IN, step.id))
        if b.points is not into:  # it passes points on (validate): count what goes out
            op.inspect(
                f"{step.id}_metrics_out", b.points, partial(_count_points, OPERATOR_OUT, step.id)
            )
    sinks = list(enumerate(getattr(site, "sinks", ())))
    # Sinks that emit (e.g. rejected lines as dead letters) come first, so others can take them.
    sinks.sort(key=lambda s: not component("sink", s[1].type).emits(s[1]))
    subscribed: set[str] = set()
    for i, sink in sinks:
        subscribed.update(component("sink", sink.type).needs(sink))
        located(f"sinks.{i}", builder("sink", sink))
    for stream_name, counter in (
        ("dead_letters", _count_dead_letter),
        ("late", _count_late),
        ("aggregates", _count_windows),
    ):
        if b.has(stream_name):
            op.inspect(f"metrics_{stream_name}", b.stream(stream_name, "metrics"), counter)
    for stream_name in ("dead_letters", "late"):
        if stream_name not in subscribed and b.has(stream_name):
            op.output(
                f"unrouted_{stream_name}",
                b.stream(stream_name, f"unrouted_{stream_name}"),
                UnroutedSink(stream_name),
            )
    log.info(
        "site %s: inputs [%s] -> operators [%s] -> sinks [%s]",
        site.name,
        ", ".join(i.id for i in inputs),
        ", ".join(f"{o.id}({o.type})" for o in getattr(site, "operators", ())),
        ", ".join(f"{k.id}({k.type})" for k in getattr(site, "sinks", ())),
    )
    return b.flow
