"""Shared fixtures: service endpoints from the environment (defaults match infra/local)."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import pytest


@dataclass(frozen=True)
class Endpoints:
    kafka_bootstrap: str
    pg_dsn: str
    mqtt_host: str
    mqtt_port: int
    influx_url: str
    mqtt_tls_port: int
    mqtt_ca: str


@pytest.fixture(scope="session")
def endpoints() -> Endpoints:
    return Endpoints(
        kafka_bootstrap=os.environ.get("EDGEFLOW_KAFKA_BOOTSTRAP", "127.0.0.1:19092"),
        pg_dsn=os.environ.get(
            "EDGEFLOW_PG_DSN", "postgresql://edgeflow:edgeflow@127.0.0.1:15432/edgeflow"
        ),
        mqtt_host=os.environ.get("EDGEFLOW_MQTT_HOST", "127.0.0.1"),
        mqtt_port=int(os.environ.get("EDGEFLOW_MQTT_PORT", "11883")),
        influx_url=os.environ.get("EDGEFLOW_INFLUX_URL", "http://127.0.0.1:18086"),
        mqtt_tls_port=int(os.environ.get("EDGEFLOW_MQTT_TLS_PORT", "18884")),
        mqtt_ca=os.environ.get(
            "EDGEFLOW_MQTT_CA",
            os.path.join(
                os.environ.get("EDGEFLOW_INFRA_DIR", "/var/tmp/edgeflow-infra"),
                "mosquitto",
                "ca.crt",
            ),
        ),
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
