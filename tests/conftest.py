"""Shared fixtures: service endpoints from the environment (defaults match infra/local)."""

from __future__ import annotations

import base64
import json
import os
import socket
import tempfile
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

INFRA_DIR = Path(os.environ.get("EDGEFLOW_INFRA_DIR", "/var/tmp/edgeflow-infra"))

# Spools of sinks built by tests never land in the checkout (nor leak into another test):
# module-scoped fixtures share this one; each test gets its own (see _own_spool_dir).
os.environ["EDGEFLOW_SPOOL_DIR"] = tempfile.mkdtemp(prefix="edgeflow-test-spool-")
# The shipped sites serve metrics on fixed ports; flows started by tests do not (several run
# at once), except where a test sets its own port.
os.environ["EDGEFLOW_METRICS_LISTEN"] = "off"


@pytest.fixture(autouse=True)
def _own_spool_dir(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGEFLOW_SPOOL_DIR", str(tmp_path_factory.mktemp("spool")))


def infra_secrets() -> dict[str, str]:
    """The random per-installation secrets infra/local/start.sh wrote (secrets.env)."""
    path = INFRA_DIR / "secrets.env"
    if not path.is_file():
        return {}
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {k.strip(): v.strip() for k, v in pairs}


@dataclass(frozen=True)
class Endpoints:
    kafka_bootstrap: str
    kafka_sasl_bootstrap: str
    pg_dsn: str
    pg_admin_dsn: str
    mqtt_host: str
    mqtt_port: int
    influx_url: str
    mqtt_tls_port: int
    mqtt_ca: str
    mqtt_ws_port: int = 19001
    influx_user: tuple[str, str] = ("edgeflow", "edgeflow")
    influx_admin: tuple[str, str] = ("admin", "")
    secrets: dict[str, str] = field(default_factory=dict)

    def influx(
        self, path: str, *, admin: bool = True, data: bytes | None = None, **params: str
    ) -> Any:
        """Call InfluxDB's HTTP API with credentials (admin for DDL); returns parsed JSON."""
        user, password = self.influx_admin if admin else self.influx_user
        if path == "/query" and data is None:
            data = urllib.parse.urlencode({"q": params.pop("q")}).encode()
        url = f"{self.influx_url}{path}?{urllib.parse.urlencode(params)}"
        req = urllib.request.Request(url, data=data, method="POST")
        req.add_header(
            "Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            body = r.read()
        return json.loads(body) if body else {}


@pytest.fixture(scope="session")
def endpoints() -> Endpoints:
    secrets = infra_secrets()
    pg_port = os.environ.get("EDGEFLOW_PG_PORT", "15432")
    return Endpoints(
        kafka_bootstrap=os.environ.get("EDGEFLOW_KAFKA_BOOTSTRAP", "127.0.0.1:19092"),
        kafka_sasl_bootstrap=os.environ.get("EDGEFLOW_KAFKA_SASL_BOOTSTRAP", "127.0.0.1:19094"),
        pg_dsn=os.environ.get(
            "EDGEFLOW_PG_DSN", f"postgresql://edgeflow:edgeflow@127.0.0.1:{pg_port}/edgeflow"
        ),
        pg_admin_dsn=(
            f"postgresql://postgres:{secrets.get('PG_ADMIN_PASSWORD', '')}@127.0.0.1:{pg_port}/edgeflow"
        ),
        mqtt_host=os.environ.get("EDGEFLOW_MQTT_HOST", "127.0.0.1"),
        mqtt_port=int(os.environ.get("EDGEFLOW_MQTT_PORT", "11883")),
        influx_url=os.environ.get("EDGEFLOW_INFLUX_URL", "http://127.0.0.1:18086"),
        mqtt_tls_port=int(os.environ.get("EDGEFLOW_MQTT_TLS_PORT", "18884")),
        mqtt_ws_port=int(os.environ.get("EDGEFLOW_MQTT_WS_PORT", "19001")),
        mqtt_ca=os.environ.get("EDGEFLOW_MQTT_CA", str(INFRA_DIR / "mosquitto" / "ca.crt")),
        influx_admin=("admin", secrets.get("INFLUX_ADMIN_PASSWORD", "")),
        secrets=secrets,
    )


def require_port(host: str, port: int, service: str) -> None:
    """Fail (never skip) when a service the test needs is down."""
    try:
        with socket.create_connection((host, port), timeout=2):
            return
    except OSError as e:
        pytest.fail(
            f"{service} is not reachable on {host}:{port} ({e}); "
            "start it with: bash infra/local/start.sh"
        )
