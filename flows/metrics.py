"""Metrics, health and status: what an unattended gateway tells its dashboards and pagers.

One registry per process (:data:`REGISTRY`) in Prometheus' text format, served with the
health endpoints by :func:`serve` when the site file sets ``observability.listen``. Names
follow Prometheus conventions: ``edgeflow_..._total`` counters, base units (seconds, bytes),
labels of bounded cardinality (a component id, a stage, a reason class, a Kafka partition;
never a tag). Components record into the module-level metrics below; what they record costs
a dictionary lookup and an add per batch, never per point.

Health: every connection (:class:`connectors._io.Link`) and every spooled sink registers a
check; ``/health/ready`` is 200 when all pass and 503 with the failing components and why.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

__all__ = [
    "REGISTRY",
    "Check",
    "HealthServer",
    "StatusLogger",
    "checks",
    "count_dead_letter",
    "count_late",
    "ready",
    "register_check",
    "register_connection",
    "reset_checks",
    "serve",
]

log = logging.getLogger("edgeflow.status")

disable_created_metrics()  # type: ignore[no-untyped-call]  # *_created only doubles a scrape
REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)  # process_resident_memory_bytes, process_cpu_seconds_total
PlatformCollector(registry=REGISTRY)

# -- inputs ------------------------------------------------------------------------------
INPUT_POINTS = Counter(
    "edgeflow_input_points_total", "Points received, per input", ["input"], registry=REGISTRY
)
INPUT_MESSAGES = Counter(
    "edgeflow_input_messages_total",
    "Batches (messages, polls, file chunks) received, per input",
    ["input"],
    registry=REGISTRY,
)
INPUT_DECODE_ERRORS = Counter(
    "edgeflow_input_decode_errors_total",
    "Dead letters an input produced (undecodable payloads, refused reads)",
    ["input"],
    registry=REGISTRY,
)
INPUT_EVENT_LAG = Gauge(
    "edgeflow_input_event_lag_seconds",
    "Now minus the newest event time an input delivered (its watermark lag)",
    ["input"],
    registry=REGISTRY,
)
QUEUE_DEPTH = Gauge(
    "edgeflow_input_queue_depth",
    "Items waiting in an input's bounded queue for the flow",
    ["input"],
    registry=REGISTRY,
)
OVERFLOW_DROPS = Counter(
    "edgeflow_input_overflow_dropped_total",
    "Items an input's full queue dropped by its overflow policy",
    ["input"],
    registry=REGISTRY,
)
CONNECTED = Gauge(
    "edgeflow_connection_up",
    "1 while a connection (input device/server or sink destination) is up, else 0",
    ["component", "endpoint"],
    registry=REGISTRY,
)
RECONNECTS = Counter(
    "edgeflow_reconnects_total",
    "Connections re-established after a loss",
    ["component", "endpoint"],
    registry=REGISTRY,
)
KAFKA_LAG = Gauge(
    "edgeflow_kafka_consumer_lag_messages",
    "High watermark minus the next offset to read, per Kafka input and partition",
    ["input", "topic", "partition"],
    registry=REGISTRY,
)
# -- operators ---------------------------------------------------------------------------
OPERATOR_IN = Counter(
    "edgeflow_operator_points_in_total", "Points into an operator", ["operator"], registry=REGISTRY
)
OPERATOR_OUT = Counter(
    "edgeflow_operator_points_out_total",
    "Points out of an operator (to the next one)",
    ["operator"],
    registry=REGISTRY,
)
DEAD_LETTERS = Counter(
    "edgeflow_dead_letters_total",
    "Dead letters by stage and reason class",
    ["stage", "reason"],
    registry=REGISTRY,
)
LATE = Counter(
    "edgeflow_late_points_total", "Late points by reason class", ["reason"], registry=REGISTRY
)
WINDOWS = Counter(
    "edgeflow_windows_closed_total",
    "Window rows emitted, first emissions (revision 0)",
    ["window"],
    registry=REGISTRY,
)
REEMITTED = Counter(
    "edgeflow_windows_reemitted_total",
    "Window rows re-emitted with a higher revision (a reopened window)",
    ["window"],
    registry=REGISTRY,
)
# -- sinks -------------------------------------------------------------------------------
SINK_ROWS = Counter(
    "edgeflow_sink_rows_written_total", "Rows a sink delivered", ["sink"], registry=REGISTRY
)
SINK_LATENCY = Histogram(
    "edgeflow_sink_write_seconds",
    "Time of one delivery (a transaction or request) of a sink",
    ["sink"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
SINK_BUFFERED = Gauge(
    "edgeflow_sink_buffered_rows",
    "Rows spooled and not yet delivered",
    ["sink"],
    registry=REGISTRY,
)
SINK_RETRIES = Counter(
    "edgeflow_sink_retries_total",
    "Deliveries that failed for an outage and will be retried",
    ["sink"],
    registry=REGISTRY,
)
SINK_FAILURES = Counter(
    "edgeflow_sink_delivery_failures_total",
    "Rows a destination refused for good (they become dead letters)",
    ["sink"],
    registry=REGISTRY,
)

# A reason's variable parts (numbers, quoted values, paths) go, so its class is bounded; a
# stage keeps at most _MAX_REASONS classes, the rest count as "other".
_VARIABLE = re.compile(r"\([^)]*\)|'[^']*'|\"[^\"]*\"|\S*\d\S*|\S*/\S*")
_MAX_REASONS = 20
_reasons: dict[str, set[str]] = {}
_reasons_lock = threading.Lock()


def reason_class(stage: str, reason: str) -> str:
    """Return the bounded label for ``reason``: its words without variable parts."""
    text = _VARIABLE.sub("", reason).split(":", 1)[0].strip()
    text = " ".join(text.split())[:60] or "other"
    with _reasons_lock:
        seen = _reasons.setdefault(stage, set())
        if text not in seen:
            if len(seen) >= _MAX_REASONS:
                return "other"
            seen.add(text)
    return text


def count_dead_letter(stage: str, reason: str) -> None:
    """Count one dead letter."""
    DEAD_LETTERS.labels(stage, reason_class(stage, reason)).inc()


def count_late(reason: str) -> None:
    """Count one late point."""
    LATE.labels(reason_class("late", reason)).inc()


# -- health ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Check:
    """A readiness check: ``probe()`` returns ``(ready, why not)``."""

    kind: str  # "input" or "sink"
    name: str
    probe: Callable[[], tuple[bool, str]]


_checks: dict[tuple[str, str], Check] = {}
_checks_lock = threading.Lock()


def register_check(kind: str, name: str, probe: Callable[[], tuple[bool, str]]) -> None:
    """Add (or replace) the readiness check of component ``name``."""
    with _checks_lock:
        _checks[(kind, name)] = Check(kind, name, probe)


_connections: dict[str, dict[str, Callable[[], tuple[bool | None, str]]]] = {}


def register_connection(
    component: str, endpoint: str, state: Callable[[], tuple[bool | None, str]]
) -> None:
    """Add a connection of input ``component``; ``state()`` is ``(up or None, why down)``.

    The input is ready while one of its connections is up; while others are down it is
    ready but degraded, and the body names them.
    """
    with _checks_lock:
        _connections.setdefault(component, {})[endpoint] = state
    register_check("input", component, partial(_input_ready, component))


def _input_ready(component: str) -> tuple[bool, str]:
    with _checks_lock:
        states = {e: f() for e, f in _connections.get(component, {}).items()}
    down = [f"{e}: {why or 'connecting'}" for e, (up, why) in states.items() if not up]
    if len(down) == len(states):
        return False, "; ".join(down) or "no connection yet"
    return True, f"degraded: {'; '.join(down)}" if down else ""


def reset_checks() -> None:
    """Forget every check (a new flow is being built in this process)."""
    with _checks_lock:
        _checks.clear()
        _connections.clear()


def checks() -> list[Check]:
    """Return the registered checks."""
    with _checks_lock:
        return list(_checks.values())


def ready() -> tuple[bool, dict[str, Any]]:
    """Return whether every component is ready, and the JSON body that says which is not."""
    components = []
    for c in checks():
        try:
            ok, why = c.probe()
        except Exception as e:  # a failing probe is a failing component
            ok, why = False, f"check failed: {type(e).__name__}: {e}"
        components.append({"kind": c.kind, "name": c.name, "ready": ok, "reason": why})
    ok = all(c["ready"] for c in components)
    return ok, {"status": "ready" if ok else "not ready", "components": components}


# -- HTTP --------------------------------------------------------------------------------
class _Handler(BaseHTTPRequestHandler):
    server_version = "edgeflow"

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            # The classic text format: what every Prometheus (Debian's 2.42 included) reads.
            self._send(200, generate_latest(REGISTRY), CONTENT_TYPE_PLAIN_0_0_4)
        elif path == "/health/live":
            self._json(200, {"status": "live"})
        elif path == "/health/ready":
            ok, body = ready()
            self._json(200 if ok else 503, body)
        else:
            self._json(404, {"error": f"no such path {path}; try /metrics or /health/ready"})

    def _json(self, code: int, body: dict[str, Any]) -> None:
        self._send(code, json.dumps(body).encode(), "application/json")

    def _send(self, code: int, body: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Log nothing: scrapes are not worth a log line."""


class HealthServer:
    """``/metrics``, ``/health/live`` and ``/health/ready`` on one address, in a thread."""

    def __init__(self, host: str, port: int) -> None:
        self.httpd = ThreadingHTTPServer((host, port), _Handler)
        self.httpd.daemon_threads = True
        self.address = f"{host}:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, name="edgeflow-metrics", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        """Stop serving."""
        self.httpd.shutdown()
        self.httpd.server_close()


_server: HealthServer | None = None


def serve(listen: str, *, process_index: int = 0) -> HealthServer:
    """Serve the endpoints on ``host:port`` (+ ``process_index``, one port per process).

    A second call in the same process returns the running server.
    """
    global _server
    if _server is None:
        host, port = listen.rsplit(":", 1)
        try:
            _server = HealthServer(host, int(port) + process_index if int(port) else 0)
        except OSError as e:
            msg = f"cannot listen on {listen}: {e}"
            raise OSError(msg) from e
        log.info("metrics and health on http://%s (/metrics, /health/ready)", _server.address)
    return _server


# -- status line -------------------------------------------------------------------------
def _total(metric: Counter | Gauge) -> float:
    return sum(
        s.value for m in metric.collect() for s in m.samples if not s.name.endswith("_created")
    )


class StatusLogger(threading.Thread):
    """Every ``interval_s``, one INFO line: rates, lag, buffers (instead of per-batch lines)."""

    def __init__(self, interval_s: float) -> None:
        super().__init__(name="edgeflow-status", daemon=True)
        self.interval_s = interval_s
        self.stop = threading.Event()

    def line(self, dt_s: float, before: dict[str, float]) -> tuple[str, dict[str, float]]:
        """Return the status line for the last ``dt_s`` seconds and the new totals."""
        now = {
            "in": _total(INPUT_POINTS),
            "rows": _total(SINK_ROWS),
            "dead": _total(DEAD_LETTERS),
            "late": _total(LATE),
        }
        rate = {k: (now[k] - before.get(k, 0.0)) / max(dt_s, 1e-9) for k in now}
        lags = [s.value for m in INPUT_EVENT_LAG.collect() for s in m.samples]
        down = sum(1 for m in CONNECTED.collect() for s in m.samples if s.value == 0)
        text = (
            f"status: in {rate['in']:,.0f} points/s, out {rate['rows']:,.0f} rows/s, "
            f"dead letters {now['dead'] - before.get('dead', 0.0):,.0f}, "
            f"late {now['late'] - before.get('late', 0.0):,.0f} "
            f"(last {dt_s:.0f} s); max input lag {max(lags, default=0.0):.1f} s; "
            f"buffered {_total(SINK_BUFFERED):,.0f} rows; connections down {down}"
        )
        return text, now

    def run(self) -> None:
        """Log the line until stopped."""
        before: dict[str, float] = {}
        last = time.monotonic()
        while not self.stop.wait(self.interval_s):
            t = time.monotonic()
            text, before = self.line(t - last, before)
            last = t
            log.info("%s", text)
