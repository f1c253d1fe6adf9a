"""No secret ever appears in output: flows with a secret in every place a site file takes one,
run against working servers and against failing ones (wrong credentials, unreachable ports, an
unparseable DSN), with every line they print and every file they write searched for each secret.

The secrets are random per installation (infra/local writes them to secrets.env), so a match
can only be a leak. Debug logging is on for edgeflow's own loggers.
"""

from __future__ import annotations

import http.server
import os
import secrets as pysecrets
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from connectors.opcua.certs import ensure_certificate
from simulators.opcua_server import OpcUaSiteServer
from simulators.site import EnergySite
from tests.conftest import require_port

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _V2Stub(http.server.BaseHTTPRequestHandler):
    """An InfluxDB v2 write endpoint: 204 for the right token, 401 otherwise."""

    token = ""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        ok = self.headers.get("Authorization") == f"Token {self.token}"
        self.send_response(204 if ok else 401)
        self.end_headers()
        if not ok:
            self.wfile.write(b'{"code":"unauthorized","message":"unauthorized access"}')

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def v2_stub():
    _V2Stub.token = "influxtoken-" + pysecrets.token_hex(10)
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _V2Stub)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", _V2Stub.token
    srv.shutdown()


@pytest.fixture(scope="module")
def opcua(tmp_path_factory):
    d = tmp_path_factory.mktemp("opcua")
    scert, skey = ensure_certificate(
        d, name="server", app_uri="urn:edgeflow:simulator", server=True
    )
    ccert, ckey = ensure_certificate(d, name="client")
    password = "opcuasecret-" + pysecrets.token_hex(10)
    srv = OpcUaSiteServer(
        EnergySite(start_ms=1780308000000),
        port=free_port(),
        update_ms=500,
        cert=scert,
        key=skey,
        users={"operator": password},
    ).start()
    yield srv.url, password, str(ccert), str(ckey)
    srv.stop()


def _site(tmp_path: Path, inputs: list, sinks: list) -> Path:
    data = {
        "name": "secrets",
        "site": {"enterprise": "acme", "site": "s1"},
        "inputs": [
            {
                "type": "simulator",
                "speed": 0,
                "start": "2026-06-01T10:00:00Z",
                "duration_s": 600,
                "ticks_per_batch": 60,
            },
            *inputs,
        ],
        "operators": [
            {"type": "validate", "max_past_ms": None},
            {"type": "aggregate", "idle_close": False},
        ],
        "sinks": [
            {
                "type": "file",
                "dir": str(tmp_path / "out"),
                "streams": ["aggregates", "events", "dead_letters", "late"],
            },
            *sinks,
        ],
    }
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _run(site: Path, env: dict[str, str], *, until: list[str], timeout_s: float = 60) -> str:
    """Run the edge flow until it printed every text in ``until``; then SIGINT it.

    Returns everything it printed. Live inputs never end on their own: the texts are what the
    test waits for (a connection made, a failure reported), never a fixed time.
    """
    proc = subprocess.Popen(
        [sys.executable, "-m", "bytewax.run", "flows.edge"],
        env={
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "EDGEFLOW_SITE": str(site),
            "EDGEFLOW_LOG_LEVEL": "DEBUG",
            **env,
        },
        cwd=site.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    seen = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            text = "".join(lines)
            if all(u in text for u in until):
                seen.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    seen.wait(timeout_s)
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    reader.join(10)
    return "".join(lines)


def _written(directory: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in directory.rglob("*") if p.is_file())


def _assert_clean(text: str, secrets: list[str]) -> None:
    for secret in secrets:
        assert secret and secret not in text, f"a secret leaked: ...{secret[-4:]}"


def _kafka(endpoints, password_var: str) -> dict:
    return {
        "bootstrap_servers": endpoints.kafka_sasl_bootstrap,
        "config": {
            "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanism": "PLAIN",
            "sasl.username": "edgeflow",
        },
        "sasl_password": f"${{{password_var}}}",
    }


def test_no_secret_in_any_output_with_working_servers(endpoints, v2_stub, opcua, tmp_path):
    require_port("127.0.0.1", endpoints.mqtt_tls_port, "mosquitto (TLS)")
    require_port("127.0.0.1", int(endpoints.kafka_sasl_bootstrap.rsplit(":", 1)[1]), "kafka SASL")
    s = endpoints.secrets
    v2_url, v2_token = v2_stub
    opc_url, opc_password, ccert, ckey = opcua
    env = {
        "MQTT_PW": s["MQTT_SECRET_PASSWORD"],
        "PG_PW": s["PG_SECRET_PASSWORD"],
        "INFLUX_PW": s["INFLUX_SECRET_PASSWORD"],
        "INFLUX_TOKEN": v2_token,
        "KAFKA_PW": s["KAFKA_SASL_PASSWORD"],
        "OPCUA_PW": opc_password,
    }
    site = _site(
        tmp_path,
        inputs=[
            {
                "type": "mqtt",
                "host": "127.0.0.1",
                "port": endpoints.mqtt_tls_port,
                "tls_ca": endpoints.mqtt_ca,
                "username": "edgeflow_secret",
                "password": "${MQTT_PW}",
                "client_id": f"secrets-{pysecrets.token_hex(4)}",
                "topics": [{"template": "secrets/{area}/{line}/{machine}/{tag}"}],
            },
            {
                "type": "opcua",
                "url": opc_url,
                "browse": ["ns=2;s=Site"],
                "security": "SignAndEncrypt",
                "cert": ccert,
                "key": ckey,
                "username": "operator",
                "password": "${OPCUA_PW}",
            },
        ],
        sinks=[
            {
                "type": "timescaledb",
                "schema": "secrets_ok",
                "streams": ["aggregates", "events"],
                "dsn": "postgresql://edgeflow_secret:${PG_PW}@127.0.0.1:15432/edgeflow",
            },
            {
                "type": "influxdb",
                "url": endpoints.influx_url,
                "database": "edgeflow",
                "username": "edgeflow_secret",
                "password": "${INFLUX_PW}",
                "streams": ["aggregates"],
            },
            {
                "type": "influxdb",
                "id": "v2",
                "url": v2_url,
                "api": "v2",
                "org": "o",
                "bucket": "b",
                "token": "${INFLUX_TOKEN}",
                "streams": ["aggregates"],
            },
            {
                "type": "kafka",
                "kafka": _kafka(endpoints, "KAFKA_PW"),
                "topics": {"aggregates": f"edgeflow.secrets.{pysecrets.token_hex(4)}"},
            },
        ],
    )
    output = _run(
        site,
        env,
        until=[
            f"{name}: connected to"
            for name in ("mqtt", "opcua", "timescaledb", "influxdb", "v2", "kafka")
        ],
    )
    assert "loaded site secrets" in output
    # The working run did its work: rows reached the database through the secret account.
    import psycopg

    dsn = f"postgresql://edgeflow_secret:{s['PG_SECRET_PASSWORD']}@127.0.0.1:15432/edgeflow"
    with psycopg.connect(dsn) as conn:
        (n,) = conn.execute("select count(*) from secrets_ok.aggregates").fetchone()
        conn.execute("drop schema secrets_ok cascade")
    assert n > 0, output[-3000:]
    _assert_clean(output + _written(tmp_path), list(env.values()))


@pytest.mark.parametrize(
    "case",
    [
        "mqtt-wrong",
        "opcua-wrong",
        "pg-wrong",
        "pg-unparseable",
        "pg-down",
        "influx-wrong",
        "influx-v2-wrong",
        "influx-down",
        "kafka-wrong",
        "kafka-down",
    ],
)
def test_no_secret_in_any_output_when_servers_fail(endpoints, v2_stub, opcua, tmp_path, case):
    wrong = f"wrongsecret-{pysecrets.token_hex(10)}"
    v2_url, _ = v2_stub
    opc_url, _, ccert, ckey = opcua
    down = free_port()
    inputs: list = []
    sinks: list = []
    if case == "mqtt-wrong":
        inputs = [
            {
                "type": "mqtt",
                "host": "127.0.0.1",
                "port": endpoints.mqtt_tls_port,
                "tls_ca": endpoints.mqtt_ca,
                "username": "edgeflow_secret",
                "password": "${PW}",
                "connect_timeout_s": 3,
                "topics": [{"template": "x/{tag}"}],
            }
        ]
    elif case == "opcua-wrong":
        inputs = [
            {
                "type": "opcua",
                "url": opc_url,
                "browse": ["ns=2;s=Site"],
                "security": "SignAndEncrypt",
                "cert": ccert,
                "key": ckey,
                "username": "operator",
                "password": "${PW}",
            }
        ]
    elif case.startswith("pg"):
        dsn = {
            "pg-wrong": "postgresql://edgeflow_secret:${PW}@127.0.0.1:15432/edgeflow",
            "pg-unparseable": "postgresql://edgeflow_secret:${PW}@[::1",
            "pg-down": f"postgresql://edgeflow_secret:${{PW}}@127.0.0.1:{down}/edgeflow",
        }[case]
        sinks = [{"type": "timescaledb", "dsn": dsn, "close_timeout_s": 2, "connect_timeout_s": 1}]
    elif case == "influx-wrong":
        sinks = [
            {
                "type": "influxdb",
                "url": endpoints.influx_url,
                "username": "edgeflow_secret",
                "password": "${PW}",
                "retry_timeout_s": 3,
                "close_timeout_s": 3,
            }
        ]
    elif case == "influx-v2-wrong":
        sinks = [
            {
                "type": "influxdb",
                "url": v2_url,
                "api": "v2",
                "org": "o",
                "bucket": "b",
                "token": "${PW}",
                "retry_timeout_s": 3,
                "close_timeout_s": 3,
            }
        ]
    elif case == "influx-down":
        sinks = [
            {
                "type": "influxdb",
                "url": f"http://127.0.0.1:{down}",
                "username": "u",
                "password": "${PW}",
                "retry_timeout_s": 3,
                "close_timeout_s": 3,
            }
        ]
    else:
        kafka = _kafka(endpoints, "PW")
        if case == "kafka-down":
            kafka["bootstrap_servers"] = f"127.0.0.1:{down}"
        sinks = [
            {
                "type": "kafka",
                "kafka": kafka,
                "delivery_timeout_s": 5,
                "close_timeout_s": 3,
                "topics": {"aggregates": "edgeflow.secrets.fail"},
            }
        ]
    site = _site(tmp_path, inputs, sinks)
    expected = {
        "mqtt-wrong": "Not authorized",
        "opcua-wrong": "BadUserAccessDenied",
        "pg-wrong": "password authentication failed",
        "pg-unparseable": "not a PostgreSQL connection string",
        "pg-down": "Connection refused",
        "influx-wrong": "status 401",
        "influx-v2-wrong": "status 401",
        "influx-down": "status down",
        "kafka-wrong": "Authentication failed",
        "kafka-down": "Connection refused",
    }[case]
    output = _run(site, {"PW": wrong}, until=[expected])
    everything = output + _written(tmp_path)
    assert expected in everything, f"the {case} failure was not reached:\n{output[-2000:]}"
    _assert_clean(everything, [wrong])
