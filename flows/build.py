"""Build a Bytewax dataflow from a site config.

Inputs produce batches; the operator chain transforms a :class:`Streams` bundle step by step
(in config order); sinks subscribe to named streams. A custom operator is any callable
``fn(step_id, streams, **params) -> Streams`` named in the site config.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, cast

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream
from bytewax.operators import KeyedStream

from connectors.codec import CONTENT_TYPES, encode_points, encode_row
from connectors.console import ConsoleSink, UnroutedSink
from connectors.files import JsonLinesSink
from connectors.influx import InfluxWriter
from connectors.kafka import KafkaMessage, KafkaPointsSource, KafkaSink, end_offsets
from connectors.modbus import ModbusDeviceSource
from connectors.modbus_codec import RegisterSpec
from connectors.mqtt import MqttSource, TopicTemplate
from connectors.opcua import NodeMap, OpcUaSource
from connectors.simulator import SimulatorSource
from connectors.timescale import TimescaleSink
from flows.config import (
    AggregateOp,
    AlarmOp,
    AnomalyOp,
    CustomOp,
    InferenceOp,
    InfluxSinkConfig,
    KafkaInput,
    KafkaSinkConfig,
    KpiOp,
    ModbusInput,
    MqttInput,
    OpcUaInput,
    SimulatorInput,
    SiteConfig,
    StreamName,
    TimescaleSinkConfig,
    ValidateOp,
)
from flows.config import (
    ConsoleSink as ConsoleSinkConfig,
)
from flows.config import (
    FileSink as FileSinkConfig,
)
from flows.errors import ConfigError
from operators.alarm import AlarmRule
from operators.anomaly import AnomalyRule
from operators.dataflow import (
    aggregate,
    alarms,
    anomalies,
    coalesce,
    late_dead_letters,
    score_windows,
    validate,
)
from operators.events import Event
from operators.inference import FeatureSpec, ModelSpec, OnnxScorer
from operators.kpi import Kpi, KpiCalculator, KpiConfig
from operators.record import DeadLetter, Isa95, PointBatch, Quality, to_ms
from operators.validate import (
    KNOWN_CONVERSIONS,
    RangeRule,
    UnitConversion,
    ValidationRules,
)
from operators.window import WindowAggregates
from simulators.site import Fault, SiteLayout

__all__ = ["Streams", "build_flow", "shard_key", "to_rows"]

log = logging.getLogger(__name__)


def shard_key(batch: PointBatch) -> str:
    """Key batches by site so each site's state lives on one worker."""
    if not batch.tags:
        return batch.source or "_"
    return batch.tags[0].path.split("/", 2)[1]


@dataclass(frozen=True)
class Streams:
    """The streams an operator chain reads and extends.

    ``points`` is the current keyed stream of batches (replaced by validating or transforming
    operators); the other kinds collect every contributing stream and are merged for sinks.
    """

    flow: Dataflow
    raw: Stream[PointBatch]
    points: KeyedStream[PointBatch]
    aggregates: tuple[Stream[WindowAggregates], ...] = ()
    kpis: tuple[Stream[Kpi], ...] = ()
    events: tuple[Stream[Event], ...] = ()
    late: tuple[Stream[DeadLetter], ...] = ()
    dead_letters: tuple[Stream[DeadLetter], ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    def add(self, kind: str, stream: Stream[Any]) -> Streams:
        """Return a bundle with ``stream`` added to the ``kind`` collection."""
        current: tuple[Stream[Any], ...] = getattr(self, kind)
        changes: dict[str, Any] = {kind: (*current, stream)}
        return replace(self, **changes)


def _simulator(cfg: SimulatorInput, site: SiteConfig) -> SimulatorSource:
    return SimulatorSource(
        name=cfg.id,
        layout=SiteLayout(
            enterprise=site.site.enterprise, site=site.site.site, inverters=cfg.inverters
        ),
        interval_ms=cfg.interval_ms,
        speed=cfg.speed,
        start_ms=None if cfg.start is None else to_ms(cfg.start),
        duration_s=cfg.duration_s,
        ticks_per_batch=cfg.ticks_per_batch,
        seed=cfg.seed,
        faults=tuple(Fault(f.kind, f.asset, f.start_s, f.duration_s) for f in cfg.faults),
        disorder_fraction=cfg.disorder_fraction,
        disorder_max_delay_ms=cfg.disorder_max_delay_ms,
    )


def _rules(cfg: ValidateOp) -> ValidationRules:
    conversions = []
    for c in cfg.conversions:
        known = KNOWN_CONVERSIONS.get((c.from_unit, c.to_unit))
        if (c.factor is None or c.offset is None) and known is None and c.factor is None:
            msg = (
                f"operator {cfg.id}: no known conversion {c.from_unit} -> {c.to_unit}; "
                "give factor (and offset)"
            )
            raise ConfigError(msg)
        factor = c.factor if c.factor is not None else (known or (1.0, 0.0))[0]
        offset = c.offset if c.offset is not None else (known or (1.0, 0.0))[1]
        conversions.append(UnitConversion(c.from_unit, c.to_unit, factor, offset, c.tags))
    return ValidationRules(
        accept_quality=frozenset(Quality[q] for q in cfg.accept_quality),
        ranges=tuple(RangeRule(r.tags, r.min, r.max) for r in cfg.ranges),
        max_future_ms=cfg.max_future_ms,
        max_past_ms=cfg.max_past_ms,
        dedupe=cfg.dedupe,
        conversions=tuple(conversions),
        stale_after_ms=cfg.stale_after_ms,
        stale_tags=cfg.stale_tags,
    )


def _load_callable(path: str) -> Callable[..., Streams]:
    module_name, _, attr = path.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        msg = f"custom operator callable {path!r} cannot be loaded: {e}"
        raise ConfigError(msg) from e
    if not callable(obj):
        msg = f"custom operator {path!r} is not callable"
        raise ConfigError(msg)
    return obj  # type: ignore[no-any-return]


def _merged(parts: tuple[Stream[Any], ...], step_id: str) -> Stream[Any]:
    return parts[0] if len(parts) == 1 else op.merge(step_id, *parts)


def _kpi_factory(step: KpiOp) -> Callable[[], KpiCalculator]:
    cfg = KpiConfig(**step.model_dump(exclude={"type", "id"}))
    return partial(KpiCalculator, cfg)


def _scorer_factory(step: InferenceOp) -> Callable[[], OnnxScorer]:
    features = tuple(FeatureSpec(**f.model_dump()) for f in step.features)
    models = tuple(ModelSpec(**m.model_dump()) for m in step.models)
    return partial(OnnxScorer, step.window_ms, step.assets, features, models)


def _apply(step: Any, s: Streams) -> Streams:
    if isinstance(step, ValidateOp):
        out = validate(step.id, s.points, _rules(step))
        oks = out.oks
        if step.coalesce_max_points:
            oks = coalesce(
                f"{step.id}_coalesce",
                oks,
                max_points=step.coalesce_max_points,
                max_delay_ms=step.coalesce_max_delay_ms,
            )
        return replace(s, points=oks).add("dead_letters", out.errs).add("events", out.events)
    if isinstance(step, AggregateOp):
        agg = aggregate(
            step.id,
            s.points,
            window_ms=step.window_ms,
            rollup_ms=step.rollup_ms,
            allowed_lateness_ms=step.allowed_lateness_ms,
            idle_close=step.idle_close,
            reopen_horizon_ms=step.reopen_horizon_ms,
        )
        late = op.flat_map(
            f"{step.id}_late",
            agg.late,
            lambda b: late_dead_letters(b, stage=step.id, window_ms=step.window_ms),
        )
        return s.add("aggregates", agg.aggregates).add("late", late)
    if isinstance(step, AnomalyOp):
        rules = tuple(AnomalyRule(**r.model_dump()) for r in step.rules)
        return s.add("events", anomalies(step.id, s.points, rules))
    if isinstance(step, AlarmOp):
        alarm_rules = tuple(AlarmRule(**r.model_dump()) for r in step.rules)
        return s.add("events", alarms(step.id, s.points, alarm_rules))
    if isinstance(step, KpiOp | InferenceOp):
        if not s.aggregates:
            msg = f"operator {step.id} ({step.type}) needs an aggregate operator before it"
            raise ConfigError(msg)
        windows = _merged(s.aggregates, f"{step.id}_in")
        factory = _kpi_factory(step) if isinstance(step, KpiOp) else _scorer_factory(step)
        factory()  # fail at build time: bad model files, feature count mismatch
        scored = score_windows(step.id, windows, factory)
        return s.add("kpis", scored.kpis).add("events", scored.events)
    if isinstance(step, CustomOp):
        fn = _load_callable(step.callable)
        result = fn(step.id, s, **step.params)
        if not isinstance(result, Streams):
            msg = f"custom operator {step.id} ({step.callable}) must return Streams"
            raise ConfigError(msg)
        return result
    msg = f"unsupported operator type {type(step).__name__}"
    raise ConfigError(msg)


def to_rows(stream: str, item: Any) -> list[dict[str, Any]]:
    """Flatten a stream item into JSON-friendly records for row-oriented sinks."""
    if isinstance(item, WindowAggregates):
        return item.rows()
    if isinstance(item, PointBatch):
        return [p.to_dict() for p in item.to_points()]
    if isinstance(item, Event | DeadLetter | Kpi):
        return [item.to_dict()]
    msg = f"stream {stream} carries {type(item).__name__}, which has no row form"
    raise TypeError(msg)


def _collect(s: Streams, name: StreamName, step: str) -> Stream[Any] | None:
    if name == "raw":
        return s.raw
    if name == "points":
        return op.key_rm(f"{step}_points_unkey", s.points)
    parts: tuple[Stream[Any], ...] = getattr(s, name)
    return _merged(parts, f"{step}_{name}_merge") if parts else None


def _tag(name: str, item: Any) -> tuple[str, Any]:
    return (name, item)


def _point_messages(encoding: Any, batch: PointBatch) -> list[tuple[str, KafkaMessage]]:
    # Stamp messages with the edge receive time: seek-by-time and skew checks use it.
    return [("", (k, v, batch.received_ms or ts)) for k, v, ts in encode_points(batch, encoding)]


def _row_messages(stream: str, item: Any) -> list[tuple[str, KafkaMessage]]:
    out: list[tuple[str, KafkaMessage]] = []
    for row in to_rows(stream, item):
        ts = row.get("ts_ms", row.get("start_ms"))
        key = row.get("path") or row.get("payload", {}).get("path") or stream
        out.append(("", (str(key), encode_row(row), ts if isinstance(ts, int) else None)))
    return out


def _keyed_row(stream: str, row: dict[str, Any]) -> tuple[str, tuple[str, dict[str, Any]]]:
    return ("db", (stream, row))


def _influx(s: Streams, sink: InfluxSinkConfig) -> Streams:
    writer = InfluxWriter(
        sink.url,
        api=sink.api,
        database=sink.database,
        retention_policy=sink.retention_policy,
        username=sink.username,
        password=sink.password.get_secret_value() if sink.password else None,
        org=sink.org,
        bucket=sink.bucket,
        token=sink.token.get_secret_value() if sink.token else None,
        retry_timeout_s=sink.retry_timeout_s,
    )
    parts = []
    for name in sink.streams:
        stream = _collect(s, name, sink.id)
        if stream is None:
            continue
        rows = op.flat_map(f"{sink.id}_{name}_rows", stream, partial(to_rows, name))
        parts.append(op.map(f"{sink.id}_{name}_tag", rows, partial(_tag, name)))
    if not parts:
        return s
    # Writing is a step, not a terminal sink, so rejected lines flow on as dead letters.
    dead = op.flat_map_batch(
        f"{sink.id}_write", _merged(tuple(parts), f"{sink.id}_all"), writer.write
    )
    return s.add("dead_letters", dead)


def _subscribed(site: SiteConfig) -> set[str]:
    names: set[str] = set()
    for sink in site.sinks:
        names.update(sink.topics if isinstance(sink, KafkaSinkConfig) else sink.streams)
    return names


def _sinks(s: Streams, site: SiteConfig, out_dir: Path | None) -> None:
    subscribed = _subscribed(site)
    for name in ("dead_letters", "late"):
        stream = _collect(s, name, f"unrouted_{name}") if name not in subscribed else None
        if stream is not None:
            op.output(f"unrouted_{name}", stream, UnroutedSink(name))
    for sink in site.sinks:
        if isinstance(sink, InfluxSinkConfig):
            s = _influx(s, sink)
    for sink in site.sinks:
        if isinstance(sink, KafkaSinkConfig):
            cfg = sink.kafka.client_config()
            for name, topic in sink.topics.items():
                stream = _collect(s, name, sink.id)
                if stream is None:
                    continue
                if name in ("raw", "points"):
                    msgs = op.flat_map(
                        f"{sink.id}_{name}_enc", stream, partial(_point_messages, sink.encoding)
                    )
                    ctype = CONTENT_TYPES[sink.encoding]
                else:
                    msgs = op.flat_map(
                        f"{sink.id}_{name}_enc", stream, partial(_row_messages, name)
                    )
                    ctype = "application/json"
                op.output(
                    f"{sink.id}_{name}",
                    msgs,
                    KafkaSink(
                        sink.kafka.bootstrap_servers,
                        topic,
                        content_type=ctype,
                        delivery_timeout_s=sink.delivery_timeout_s,
                        config=cfg,
                    ),
                )
            continue
        if isinstance(sink, TimescaleSinkConfig):
            parts = []
            for name in sink.streams:
                stream = _collect(s, name, sink.id)
                if stream is None:
                    continue
                rows = op.flat_map(f"{sink.id}_{name}_rows", stream, partial(to_rows, name))
                parts.append(op.map(f"{sink.id}_{name}_key", rows, partial(_keyed_row, name)))
            if parts:
                op.output(
                    sink.id,
                    _merged(tuple(parts), f"{sink.id}_all"),
                    TimescaleSink(
                        sink.dsn.get_secret_value(),
                        schema=sink.db_schema,
                        use_timescale=sink.use_timescale,
                        compress_after=sink.compress_after,
                        retain_for=sink.retain_for,
                        max_buffer_rows=sink.max_buffer_rows,
                        overflow=sink.overflow,
                    ),
                )
            continue
        if isinstance(sink, ConsoleSinkConfig):
            tagged: list[Stream[tuple[str, Any]]] = []
            for name in sink.streams:
                stream = _collect(s, name, sink.id)
                if stream is not None:
                    tagged.append(op.map(f"{sink.id}_{name}_tag", stream, partial(_tag, name)))
            if tagged:
                merged = tagged[0] if len(tagged) == 1 else op.merge(f"{sink.id}_all", *tagged)
                op.output(sink.id, merged, ConsoleSink(max_rows=sink.max_rows_per_window))
        elif isinstance(sink, FileSinkConfig):
            base = out_dir or sink.dir
            for name in sink.streams:
                stream = _collect(s, name, sink.id)
                if stream is None:
                    continue
                rows = op.flat_map(f"{sink.id}_{name}_rows", stream, partial(to_rows, name))
                op.output(f"{sink.id}_{name}", rows, JsonLinesSink(base / f"{name}.jsonl"))


def _kafka_source(inp: KafkaInput) -> KafkaPointsSource:
    cfg = inp.kafka.client_config()
    start_ms = None if inp.start_time is None else to_ms(inp.start_time)
    end_ms = None if inp.end_time is None else to_ms(inp.end_time)
    stop = None
    if end_ms is None and inp.bounded:
        stop = end_offsets(
            inp.kafka.bootstrap_servers,
            inp.topic,
            end_ms=None,
            config=cfg,
            timeout_s=inp.connect_timeout_s,
        )
    if end_ms is not None:
        # Messages are stamped with the edge receive time, which trails event time: read on a
        # little past the end and let the point filter cut exactly at end_ms.
        stop = end_offsets(
            inp.kafka.bootstrap_servers,
            inp.topic,
            end_ms=end_ms + 3_600_000,
            config=cfg,
            timeout_s=inp.connect_timeout_s,
        )
    return KafkaPointsSource(
        bootstrap_servers=inp.kafka.bootstrap_servers,
        topic=inp.topic,
        start=inp.start,
        start_ms=start_ms,
        end_ms=end_ms,
        stop_offsets=stop,
        batch_size=inp.batch_size,
        connect_timeout_s=inp.connect_timeout_s,
        config=cfg,
    )


def _identity(items: list[Any]) -> list[Any]:
    return items


def _is_dead_letter(item: object) -> bool:
    return isinstance(item, DeadLetter)


def _is_batch(item: object) -> bool:
    return isinstance(item, PointBatch)


def _sources(inp: Any, site: SiteConfig) -> list[tuple[str, Any, bool]]:
    """Return ``(step id, Bytewax source, emits lists)`` for one configured input."""
    ent, st = site.site.enterprise, site.site.site
    if isinstance(inp, SimulatorInput):
        return [(inp.id, _simulator(inp, site), False)]
    if isinstance(inp, KafkaInput):
        return [(inp.id, _kafka_source(inp), False)]
    if isinstance(inp, ModbusInput):
        return [
            (
                f"{inp.id}_{dev.device_id}",
                ModbusDeviceSource(
                    inp.host,
                    inp.port,
                    dev.device_id,
                    Isa95(ent, st, dev.area, dev.line, dev.machine),
                    tuple(RegisterSpec(**r.model_dump()) for r in dev.registers),
                    interval_ms=dev.interval_ms,
                    framer=inp.framer,
                    timeout_s=inp.timeout_s,
                    max_gap=inp.max_gap,
                    max_polls=inp.max_polls,
                    source=f"{inp.id}:{dev.device_id}",
                ),
                True,
            )
            for dev in inp.devices
        ]
    if isinstance(inp, MqttInput):
        mqtt_src = MqttSource(
            inp.host,
            inp.port,
            enterprise=ent,
            site=st,
            templates=tuple(TopicTemplate(t.template, t.payload, t.unit) for t in inp.topics),
            sparkplug_groups=inp.sparkplug_groups,
            client_id=inp.client_id,
            username=inp.username,
            password=inp.password.get_secret_value() if inp.password else None,
            tls_ca=inp.tls_ca,
            qos=inp.qos,
            queue_size=inp.queue_size,
            overflow=inp.overflow,
            max_messages=inp.max_messages,
            name=inp.id,
        )
        return [(inp.id, mqtt_src, False)]
    if isinstance(inp, OpcUaInput):
        nodes = tuple(
            NodeMap(
                n.node_id,
                f"{ent}/{st}/{n.area}/{n.line}/{n.machine}/{n.tag}",
                n.unit,
                n.scale,
                n.offset,
            )
            for n in inp.nodes
        )
        opc = OpcUaSource(
            inp.url,
            enterprise=ent,
            site=st,
            nodes=nodes,
            browse=inp.browse,
            mode=inp.mode,
            interval_ms=inp.interval_ms,
            sampling_interval_ms=inp.sampling_interval_ms,
            queue_size=inp.queue_size,
            deadband=inp.deadband,
            security=inp.security,
            cert=inp.cert,
            key=inp.key,
            application_uri=inp.application_uri,
            username=inp.username,
            password=inp.password.get_secret_value() if inp.password else None,
            max_samples=inp.max_samples,
            name=inp.id,
        )
        return [(inp.id, opc, False)]
    msg = f"unsupported input type {type(inp).__name__}"  # pragma: no cover
    raise ConfigError(msg)


def build_flow(site: SiteConfig, *, out_dir: Path | None = None, name: str = "edge") -> Dataflow:
    """Build the dataflow for ``site``."""
    flow = Dataflow(f"{name}_{site.name}")
    raws: list[Stream[PointBatch]] = []
    source_errors: list[Stream[DeadLetter]] = []
    source_events: list[Stream[Event]] = []
    for inp in site.inputs:
        for step, source, emits_lists in _sources(inp, site):
            items = op.input(step, flow, source)
            if emits_lists:
                items = op.flat_map(f"{step}_items", items, _identity)
            if isinstance(inp, SimulatorInput):  # emits point batches only
                raws.append(items)
                continue
            # Protocol sources interleave batches with dead letters (and Sparkplug events).
            split = op.branch(f"{step}_split", items, _is_batch)
            raws.append(cast(Stream[PointBatch], split.trues))
            rest = op.branch(f"{step}_rest", split.falses, _is_dead_letter)
            source_errors.append(cast(Stream[DeadLetter], rest.trues))
            source_events.append(cast(Stream[Event], rest.falses))
    raw = raws[0] if len(raws) == 1 else op.merge("inputs", *raws)
    points = op.key_on("shard", raw, shard_key)
    streams = Streams(
        flow=flow,
        raw=raw,
        points=points,
        dead_letters=tuple(source_errors),
        events=tuple(source_events),
    )
    for op_cfg in site.operators:
        streams = _apply(op_cfg, streams)
    _sinks(streams, site, out_dir)
    log.info(
        "site %s: inputs [%s] -> operators [%s] -> sinks [%s]",
        site.name,
        ", ".join(i.id for i in site.inputs),
        ", ".join(f"{o.id}({o.type})" for o in site.operators),
        ", ".join(f"{k.id}({k.type})" for k in site.sinks),
    )
    return flow
