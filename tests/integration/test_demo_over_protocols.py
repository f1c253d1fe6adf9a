"""The demo site switched to MQTT (JSON or Sparkplug B) by config alone, through mosquitto."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import pytest
import yaml
from bytewax.testing import run_main

from flows.build import build_flow
from flows.config import DEMO_SITE, parse_site
from simulators.mqtt_publisher import SitePublisher
from simulators.site import EnergySite
from tests.conftest import require_port
from tests.faults import wait_until
from tests.integration.test_edge_flow import read_jsonl
from tests.reference import reference_aggregates
from wire.records import now_ms

pytestmark = pytest.mark.integration
# Recent, minute-aligned data: the demo's clock-skew guard rejects week-old timestamps.
START_MS = (now_ms() // 60_000 - 10) * 60_000
TICKS = 125


@pytest.mark.parametrize(
    ("site_file", "per_tick", "extra"), [("demo-mqtt.yaml", 29, 0), ("demo-sparkplug.yaml", 6, 1)]
)
def test_demo_site_over_mqtt(endpoints, tmp_path: Path, site_file, per_tick, extra):
    require_port(endpoints.mqtt_host, endpoints.mqtt_port, "mosquitto")
    cfg = yaml.safe_load((DEMO_SITE.parent / site_file).read_text())
    for step in cfg["operators"]:
        for m in step.get("models", []):
            m["path"] = str((DEMO_SITE.parent / m["path"]).resolve())
    run = uuid.uuid4().hex[:6]
    group = f"demo{run}"
    inp = cfg["inputs"][0]
    inp.update(
        host=endpoints.mqtt_host,
        port=endpoints.mqtt_port,
        client_id=f"flow-{run}",
        max_messages=TICKS * per_tick + extra,
    )
    if "sparkplug_groups" in inp:
        inp["sparkplug_groups"] = [group]
    else:
        inp["topics"] = [{"template": f"plant{run}/{{area}}/{{line}}/{{machine}}/{{tag}}"}]
    cfg["sinks"] = [
        {
            "type": "file",
            "dir": str(tmp_path),
            "streams": ["raw", "aggregates", "dead_letters", "events"],
        }
    ]
    t = threading.Thread(
        target=run_main, args=(build_flow(parse_site(cfg, base_dir=DEMO_SITE.parent)),)
    )
    t.start()
    events = tmp_path / "events.jsonl"
    wait_until(  # subscribed: from here on the broker keeps every message for the flow
        lambda: events.exists() and "source_up" in events.read_text(),
        timeout_s=30,
        what="the MQTT input's source_up event",
    )
    pub = SitePublisher(
        EnergySite(start_ms=START_MS, seed=42),
        endpoints.mqtt_host,
        endpoints.mqtt_port,
        sparkplug="sparkplug" in site_file,
        group=group,
    )
    if "sparkplug" not in site_file:
        pub_topic_prefix = f"plant{run}"
        orig = pub.client.publish
        pub.client.publish = lambda topic, *a, **k: orig(  # type: ignore[method-assign]
            topic.replace("plant/", f"{pub_topic_prefix}/", 1), *a, **k
        )
    for _ in range(TICKS):
        pub.publish_tick()
    t.join(60)
    pub.close()
    assert not t.is_alive()
    assert read_jsonl(tmp_path / "dead_letters.jsonl") == []
    # Sparkplug's NBIRTH also carries the node's bdSeq metric; the site's tags are the rest.
    raw = [r for r in read_jsonl(tmp_path / "raw.jsonl") if r["tag"] != "bdSeq"]
    assert len(raw) == TICKS * 29
    # Aggregates equal an independent computation over the simulator's own points.
    sim = EnergySite(start_ms=START_MS, seed=42).step(TICKS).to_points()
    by_tag = {p.path.rsplit("/", 2)[-2] + "/" + p.tag: p for p in sim}
    rows = [r for r in read_jsonl(tmp_path / "aggregates.jsonl") if r["window"] == "1m"]
    assert len([r for r in rows if r["tag"] != "bdSeq"]) == 3 * 29
    ref = reference_aggregates(
        [(r["path"], r["unit"], r["ts_ms"], r["value"]) for r in raw], 60_000
    )
    for r in rows:
        if r["tag"] == "bdSeq":
            continue
        want = ref[(r["path"], r["start_ms"])]
        assert r["count"] == want["count"] and r["mean"] == pytest.approx(want["mean"])
    sample = next(
        r for r in raw if r["path"].endswith("inv-01/ac_power") and r["ts_ms"] == START_MS
    )
    assert sample["value"] == pytest.approx(
        next(p.value for p in sim if p.ts_ms == START_MS and p.path.endswith("inv-01/ac_power"))
    )
    assert len(by_tag) == 29
