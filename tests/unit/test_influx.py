import base64
import gzip
import http.server
import threading
from typing import ClassVar

import pytest
from pydantic import ValidationError

from connectors.errors import SinkError
from connectors.influx.config import InfluxSinkConfig
from connectors.influx.writer import InfluxWriter, escape_tag, line_for

AGG = {
    "window": "1m",
    "window_ms": 60000,
    "start_ms": 1767225600000,
    "path": "acme/s 1/pv/a,1/inv=01/ac_power",
    "unit": "kW",
    "count": 60,
    "min": 1.0,
    "max": 2.0,
    "mean": 1.5,
    "std": 0.5,
    "sum": 90.0,
    "first": 1.0,
    "last": 2.0,
    "twa": 1.5,
    "energy": 0.025,
}


@pytest.mark.parametrize(
    ("raw", "escaped"), [("a b", "a\\ b"), ("a,b", "a\\,b"), ("a=b", "a\\=b"), ("plain", "plain")]
)
def test_escape_tag(raw, escaped):
    assert escape_tag(raw) == escaped


@pytest.mark.parametrize(
    ("stream", "row", "line"),
    [
        (
            "aggregates",
            AGG,
            "aggregates_1m,area=pv,enterprise=acme,line=a\\,1,machine=inv\\=01,site=s\\ 1,"
            "tag=ac_power,unit=kW count=60i,min=1.0,max=2.0,mean=1.5,std=0.5,sum=90.0,first=1.0,"
            "last=2.0,twa=1.5,energy=0.025 1767225600000",
        ),
        (
            "points",
            {"path": "e/s/a/l/m/t", "ts_ms": 5, "value": 1.25, "unit": "", "quality": "GOOD"},
            "points,area=a,enterprise=e,line=l,machine=m,quality=GOOD,site=s,tag=t value=1.25 5",
        ),
        (
            "events",
            {
                "path": "e/s/a/l/m/t",
                "ts_ms": 7,
                "kind": "alarm",
                "rule": "hot",
                "severity": "major",
                "state": "raised",
                "message": 'says "hi"',
                "details": {"value": 90.5},
            },
            "events,area=a,enterprise=e,kind=alarm,line=l,machine=m,rule=hot,severity=major,site=s,"
            'state=raised,tag=t message="says \\"hi\\"",value=90.5 7',
        ),
        (
            "kpis",
            {"path": "e/s", "name": "pr", "window_ms": 60000, "start_ms": 9, "value": 0.8},
            "kpis,enterprise=e,name=pr,site=s value=0.8 9",
        ),
    ],
)
def test_line_protocol(stream, row, line):
    assert line_for(stream, row) == line


def test_energy_is_omitted_when_not_a_power_tag():
    assert "energy" not in line_for("aggregates", {**AGG, "energy": None})


class _Stub(http.server.BaseHTTPRequestHandler):
    replies: ClassVar[list[tuple[int, str]]] = []
    seen: ClassVar[list[tuple[str, dict, bytes]]] = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Stub.seen.append((self.path, dict(self.headers), body))
        status, text = _Stub.replies.pop(0) if _Stub.replies else (204, "")
        self.send_response(status)
        if status == 429:
            self.send_header("Retry-After", "0")
        self.end_headers()
        self.wfile.write(text.encode())

    def log_message(self, *args):
        pass


@pytest.fixture
def stub():
    _Stub.replies, _Stub.seen = [], []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def writer(url: str, **kw) -> InfluxWriter:
    return InfluxWriter(InfluxSinkConfig(type="influxdb", url=url, **kw))


def test_v2_request_shape(stub):
    w = writer(stub, api="v2", org="plant", bucket="telemetry", token="s3cret")
    assert w.write([("aggregates", AGG)]) == []
    path, headers, body = _Stub.seen[0]
    assert path == "/api/v2/write?org=plant&bucket=telemetry&precision=ms"
    assert headers["Authorization"] == "Token s3cret"
    assert headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(body).decode().startswith("aggregates_1m,")


def test_v1_request_shape(stub):
    w = writer(stub, database="db1", retention_policy="week", username="u", password="p")
    w.write([("aggregates", AGG)])
    path, headers, _ = _Stub.seen[0]
    # Credentials travel in the Authorization header, never in the URL (access logs, proxies).
    assert path == "/write?db=db1&precision=ms&rp=week"
    assert headers["Authorization"] == "Basic " + base64.b64encode(b"u:p").decode()


def test_retries_5xx_and_429(stub):
    _Stub.replies = [(503, "busy"), (429, "slow down"), (204, "")]
    w = writer(stub, retry_timeout_s=10)
    assert w.write([("aggregates", AGG)]) == []
    assert len(_Stub.seen) == 3 and w.written == 1


def test_gives_up_loudly(stub):
    _Stub.replies = [(500, "down")] * 50
    with pytest.raises(SinkError, match="did not accept"):
        writer(stub, retry_timeout_s=0.5).write([("aggregates", AGG)])


def test_400_is_bisected_to_the_bad_line(stub):
    conflict = '{"error":"field type conflict"}'
    _Stub.replies = [(400, conflict), (204, ""), (400, conflict), (204, ""), (400, conflict)]
    rows = [
        ("kpis", {"path": "e/s", "name": f"k{i}", "window_ms": 1, "start_ms": i, "value": 1.0})
        for i in range(4)
    ]
    dead = writer(stub).write(rows)
    assert len(dead) == 1
    assert dead[0].reason == "rejected (400): field type conflict"
    assert "name=k3" in dead[0].payload["line"]


def test_v2_needs_a_bucket():
    with pytest.raises(ValidationError, match="api v2 needs org and bucket"):
        writer("http://127.0.0.1:1", api="v2")
