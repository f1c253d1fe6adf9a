"""Modbus source against the simulator served over real Modbus TCP and RTU-over-TCP sockets."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from bytewax.testing import run_main

from flows.build import build_flow
from flows.config import DEMO_SITE, parse_site
from simulators.modbus_server import ModbusSiteServer
from simulators.site import EnergySite
from tests.integration.test_edge_flow import read_jsonl

MODBUS_SITE = DEMO_SITE.parent / "demo-modbus.yaml"


@pytest.fixture(params=["tcp", "rtu"])
def server(request):
    srv = ModbusSiteServer(
        EnergySite(start_ms=1780308000000), framer=request.param, update_ms=0
    ).start()
    yield srv
    srv.stop()


def modbus_site(server, out: Path, polls: int) -> dict:
    cfg = yaml.safe_load(MODBUS_SITE.read_text())
    for step in cfg["operators"]:
        for m in step.get("models", []):
            m["path"] = str((DEMO_SITE.parent / m["path"]).resolve())
    inp = cfg["inputs"][0]
    inp.update(host="127.0.0.1", port=server.port, framer=server.framer, max_polls=polls)
    for dev in inp["devices"]:
        dev["interval_ms"] = 50
    # A register the device does not have: the request fails, the rest still arrives.
    inp["devices"][0]["registers"].append({"tag": "ghost", "address": 500, "dtype": "uint16"})
    cfg["sinks"] = [{"type": "file", "dir": str(out), "streams": ["raw", "dead_letters"]}]
    return cfg


def test_demo_site_over_modbus_reads_every_type_and_order(server, tmp_path: Path):
    run_main(
        build_flow(parse_site(modbus_site(server, tmp_path, polls=3), base_dir=DEMO_SITE.parent))
    )
    raw = read_jsonl(tmp_path / "raw.jsonl")
    n_tags = sum(len(m.registers) for m in server.maps)
    assert len(raw) == 3 * n_tags
    # Values are static (update_ms=0): every read equals what the server encoded, up to the
    # register type's resolution (word-swapped float32, BADC uint32, signed int32, float64 ...).
    for r in raw:
        want = server.values[r["path"]]
        assert r["value"] == pytest.approx(want, rel=1e-6, abs=0.051), r["path"]
    assert {r["path"].split("/")[4] for r in raw} == {
        "inv-01",
        "inv-02",
        "bess-01",
        "meter-01",
        "panel-01",
        "met-01",
    }
    dead = read_jsonl(tmp_path / "dead_letters.jsonl")
    # The register is refused on every poll: one dead letter for the episode, not one per poll.
    assert len(dead) == 1
    assert "refused holding 500+1 (ghost): exception 2 (first of an episode)" in dead[0]["reason"]
