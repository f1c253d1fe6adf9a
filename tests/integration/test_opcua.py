"""OPC UA source against the simulator served over real OPC UA sockets."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
import yaml
from bytewax.testing import run_main

from connectors.opcua.certs import ensure_certificate
from connectors.opcua.config import OpcUaInput
from connectors.opcua.source import OpcUaSource
from flows.build import build_flow
from flows.config import DEMO_SITE, parse_site
from simulators.opcua_server import OpcUaSiteServer
from simulators.site import EnergySite
from tests.integration.test_edge_flow import read_jsonl
from wire.records import DeadLetter, PointBatch

START_MS = 1780308000000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def drain(part, seconds: float) -> list:
    got: list = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            got += part.next_batch()
        except StopIteration:
            break
        time.sleep(0.02)
    return got


def paths(items) -> set[str]:
    return {b.tags[i].path for b in items if isinstance(b, PointBatch) for i in b.tag_idx.tolist()}


@pytest.fixture
def server():
    srv = OpcUaSiteServer(EnergySite(start_ms=START_MS), port=free_port(), update_ms=200).start()
    yield srv
    srv.stop()


@pytest.mark.parametrize("mode", ["subscription", "polling"])
def test_demo_site_over_opcua_by_config(server, tmp_path: Path, mode):
    cfg = yaml.safe_load((DEMO_SITE.parent / "demo-opcua.yaml").read_text())
    cfg["inputs"][0].update(url=server.url, mode=mode, interval_ms=200, max_samples=29 * 4)
    cfg["inputs"][0]["nodes"] = [
        {"node_id": "ns=2;s=ghost.x", "area": "a", "line": "l", "machine": "ghost", "tag": "x"}
    ]
    cfg["operators"] = [o for o in cfg["operators"] if o["type"] in ("validate", "aggregate")]
    cfg["sinks"] = [{"type": "file", "dir": str(tmp_path), "streams": ["raw", "dead_letters"]}]
    run_main(build_flow(parse_site(cfg, base_dir=DEMO_SITE.parent)))
    raw = read_jsonl(tmp_path / "raw.jsonl")
    assert len(raw) == 29 * 4
    assert len({r["path"] for r in raw}) == 29  # every browsed variable arrives
    for r in raw:
        assert r["quality"] == "GOOD"
    dead = read_jsonl(tmp_path / "dead_letters.jsonl")
    assert [d["payload"]["node_id"] for d in dead] == ["ns=2;s=ghost.x"]
    assert "BadNodeIdUnknown" in dead[0]["reason"]


def opcua_source(
    url: str, *, enterprise: str = "enterprise", site: str = "site", **kw
) -> OpcUaSource:
    return OpcUaSource(OpcUaInput(type="opcua", url=url, **kw), enterprise, site)


def test_sign_and_encrypt_with_username(tmp_path: Path):
    scert, skey = ensure_certificate(
        tmp_path, name="server", app_uri="urn:edgeflow:simulator", server=True
    )
    ccert, ckey = ensure_certificate(tmp_path, name="client")
    srv = OpcUaSiteServer(
        EnergySite(start_ms=START_MS),
        port=free_port(),
        update_ms=200,
        cert=scert,
        key=skey,
        users={"operator": "s3cret"},
    ).start()
    try:
        for policy in ("Sign", "SignAndEncrypt"):
            src = opcua_source(
                srv.url,
                enterprise="acme",
                site="demo-solar",
                browse=("ns=2;s=Site",),
                security=policy,
                cert=str(ccert),
                key=str(ckey),
                username="operator",
                password="s3cret",
                interval_ms=200,
                max_samples=40,
            )
            got = drain(src.build_part("s", src.list_parts()[0], None), 30)
            assert sum(len(b) for b in got if isinstance(b, PointBatch)) == 40, policy
        bad = opcua_source(
            srv.url,
            browse=("ns=2;s=Site",),
            security="SignAndEncrypt",
            cert=str(ccert),
            key=str(ckey),
            username="operator",
            password="wrong",
            max_samples=1,
        )
        assert paths(drain(bad.build_part("s", bad.list_parts()[0], None), 3)) == set()
    finally:
        srv.stop()


def test_survives_a_server_restart_mid_stream(server):
    src = opcua_source(
        server.url, enterprise="acme", site="demo-solar", browse=("ns=2;s=Site",), interval_ms=200
    )
    part = src.build_part("s", src.list_parts()[0], None)
    before = drain(part, 3)
    assert len(paths(before)) == 29
    server.stop()
    during = drain(part, 2)
    assert not [b for b in during if isinstance(b, PointBatch) and len(b)]
    server.start()
    after = drain(part, 15)
    assert len(paths(after)) == 29, "the subscription must be re-created after the restart"
    assert part.connects >= 2
    assert not [d for d in before + after if isinstance(d, DeadLetter)]
