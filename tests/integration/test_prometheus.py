"""A real Prometheus server scrapes a running flow: the key series exist, and they move.

Debian's ``prometheus`` runs on loopback with a 1 s scrape interval against the flow's
``observability.listen``; the test asks Prometheus' HTTP API, as a dashboard or an alert
rule would. The flow reads an independent Modbus server (node ``modbus-serial``) with one
live and one silent unit, plus an address where nothing listens, and writes to the real
PostgreSQL, which the test then stops.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from tests.conftest import require_port
from tests.faults import FlowProcess, service, wait_until
from tests.interop.servers import NodeServer, free_port

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
PIPELINE = ROOT / "infra" / "grafana" / "dashboards" / "pipeline.json"


class Prometheus:
    """A Prometheus server on loopback scraping ``target`` every second."""

    def __init__(self, target: str, workdir: Path) -> None:
        binary = shutil.which("prometheus") or "/usr/bin/prometheus"
        if not Path(binary).exists():
            pytest.fail("prometheus is not installed; run: bash infra/local/install.sh")
        self.port = free_port()
        config = workdir / "prometheus.yml"
        config.write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "scrape_configs": [
                        {"job_name": "edgeflow", "static_configs": [{"targets": [target]}]}
                    ],
                }
            )
        )
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        wait_until(self._up, timeout_s=30, what="Prometheus to answer")

    def _up(self) -> bool:
        try:
            self.api("query", query="1")
        except (OSError, urllib.error.URLError):
            return False
        return True

    def api(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=5) as r:
            body = json.load(r)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> dict[str, float]:
        """Instant query: ``{label set: value}`` (labels as ``k=v,...``)."""
        out = {}
        for s in self.api("query", query=expr)["result"]:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s["metric"].items()))
            out[labels] = float(s["value"][1])
        return out

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=20)


@pytest.fixture
def modbus_server() -> Iterator[NodeServer]:
    srv = NodeServer("modbus_server.js", "--silent", "7").start()
    yield srv
    srv.stop()


def _device(unit: int, machine: str) -> dict[str, Any]:
    return {
        "device_id": unit,
        "area": "pv",
        "line": "a1",
        "machine": machine,
        "interval_ms": 200,
        "registers": [{"tag": "power", "address": 3, "unit": "kW"}],
    }


def _health(port: int) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/ready", timeout=5) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def test_prometheus_scrapes_a_running_flow_and_sees_it_move(endpoints, modbus_server, tmp_path):
    info = psycopg.conninfo.conninfo_to_dict(endpoints.pg_dsn)
    require_port(info.get("host", "127.0.0.1"), int(info.get("port", 5432)), "PostgreSQL")
    schema = f"prom_{uuid.uuid4().hex[:8]}"
    metrics_port = free_port()
    site = {
        "name": "observed",
        "site": {"enterprise": "acme", "site": "s1"},
        "inputs": [
            {
                "type": "modbus",
                "id": "plc",
                "host": "127.0.0.1",
                "port": modbus_server.port,
                "timeout_s": 1,
                "devices": [_device(1, "inv-01"), _device(7, "silent")],
            },
            {
                "type": "modbus",
                "id": "dead",
                "host": "127.0.0.1",
                "port": free_port(),
                "devices": [_device(3, "gone")],
            },
        ],
        "operators": [{"type": "validate"}, {"type": "aggregate", "window_ms": 1000}],
        "sinks": [
            {
                "type": "timescaledb",
                "dsn": endpoints.pg_dsn,
                "schema": schema,
                "streams": ["raw", "aggregates"],
                "close_timeout_s": 5,
            }
        ],
    }
    site_file = tmp_path / "site.yaml"
    site_file.write_text(yaml.safe_dump(site))
    flow = FlowProcess(
        "flows.edge",
        site_file,
        cwd=tmp_path,
        env={"EDGEFLOW_METRICS_LISTEN": f"127.0.0.1:{metrics_port}"},
    )
    prom = None
    stopped = False
    try:
        flow.wait_for("timescaledb: connected to")
        prom = Prometheus(f"127.0.0.1:{metrics_port}", tmp_path)
        received = 'edgeflow_input_points_total{input="plc"}'
        first = wait_until(lambda: prom.query(received), timeout_s=30, what=received)
        wait_until(
            lambda: sum(prom.query(received).values()) > sum(first.values()),
            timeout_s=30,
            what="points received to increase",
        )
        # The silent unit and the dead address show as disconnected, the live unit as up.
        up = wait_until(
            lambda: (
                (q := prom.query("edgeflow_connection_up"))
                and any(v == 0 and "device 7" in k for k, v in q.items())
                and q
            ),
            timeout_s=30,
            what="the silent device to show as disconnected",
        )
        by_endpoint = {re.search(r"endpoint=([^,]+)", k).group(1): v for k, v in up.items()}
        assert by_endpoint[f"127.0.0.1:{modbus_server.port} device 1"] == 1
        assert by_endpoint[f"127.0.0.1:{modbus_server.port} device 7"] == 0
        assert [v for k, v in by_endpoint.items() if "device 3" in k] == [0]
        # Ready says which input is degraded and which is not ready, and why.
        code, body = _health(metrics_port)
        parts = {c["name"]: c for c in body["components"]}
        assert code == 503 and body["status"] == "not ready"
        assert parts["plc"]["ready"] and "degraded" in parts["plc"]["reason"]
        assert "device 7" in parts["plc"]["reason"]
        assert not parts["dead"]["ready"]
        assert parts["timescaledb"]["ready"]
        # A stopped database: rows pile up in the sink's spool, and Prometheus sees it rise.
        service("stop", "postgres")
        stopped = True
        buffered = 'edgeflow_sink_buffered_rows{sink="timescaledb"}'
        low = wait_until(
            lambda: sum(prom.query(buffered).values()) or None,
            timeout_s=30,
            what="buffered rows",
        )
        wait_until(
            lambda: sum(prom.query(buffered).values()) > low + 20,
            timeout_s=30,
            what="buffered rows to rise while the database is down",
        )
        code, body = _health(metrics_port)
        sink = next(c for c in body["components"] if c["name"] == "timescaledb")
        assert sink["ready"] and sink["reason"].startswith("buffering ")
        # Every metric the pipeline dashboard plots exists in this real scrape: as a series
        # in Prometheus, or (one that counts what has not happened in this run, such as a
        # late point) declared in the flow's /metrics.
        names = set(prom.api("label/__name__/values"))
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics") as r:
            declared = set(re.findall(r"^# TYPE (\S+) ", r.read().decode(), re.M))
        missing = {
            m
            for m in _dashboard_metrics()
            if m not in names and re.sub(r"_(bucket|sum|count)$", "", m) not in declared
        }
        assert not missing, f"the pipeline dashboard plots metrics no flow exports: {missing}"
        assert "edgeflow_sink_write_seconds_bucket" in names
    finally:
        if stopped:
            service("start", "postgres")
        if prom is not None:
            prom.close()
        if flow.running():
            flow.signal()
            flow.wait(30)
        with psycopg.connect(endpoints.pg_dsn, autocommit=True) as conn:
            conn.execute(f'drop schema if exists "{schema}" cascade')


def _dashboard_metrics() -> set[str]:
    exprs = [t["expr"] for p in json.loads(PIPELINE.read_text())["panels"] for t in p["targets"]]
    found = {m for e in exprs for m in re.findall(r"\b((?:edgeflow|process)_[a-z_]+)", e)}
    assert len(found) >= 15, f"the pipeline dashboard lost its PromQL: {found}"
    return found
