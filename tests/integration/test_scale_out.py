"""One processor for many sites, many processors for one topic (issue 16), on the real broker.

Edge flows of several sites write one raw topic; processors read it with 1 worker, 2 workers
and a 2-process bytewax cluster (``-i/-a``), and a cluster is killed with SIGKILL and resumed.
Every run's outputs (final aggregates, events, KPIs, late points, dead letters) must equal
the 1-worker run's, and every site's results must equal what the site gives alone.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from bytewax.testing import run_main
from confluent_kafka.admin import AdminClient, NewTopic

from flows.build import build_flow
from flows.config import DEMO_SITE, parse_site
from flows.recovery import committed_frontier
from tests.conftest import require_port
from tests.faults import FlowProcess, wait_until
from tests.integration.test_edge_flow import demo_config, read_jsonl
from tests.interop.servers import free_port

pytestmark = pytest.mark.integration
START = "2026-06-01T10:00:00Z"
LATER = "2026-06-01T10:20:00Z"
STREAMS = ("aggregates", "events", "kpis", "late", "dead_letters")


def _require_kafka(bootstrap: str) -> None:
    host, port = bootstrap.rsplit(":", 1)
    require_port(host, int(port), "Kafka")


def _topic(bootstrap: str, partitions: int) -> str:
    name = f"edgeflow.test.scale.{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    # The points carry event times months ago: only unlimited retention keeps them.
    new = NewTopic(
        name, num_partitions=partitions, replication_factor=1, config={"retention.ms": "-1"}
    )
    admin.create_topics([new])[name].result(30)
    return name


def _edge(bootstrap: str, topic: str, site: str, seed: int, *, start: str = START) -> None:
    """Run one site's edge flow (the demo simulator, out of order, some late) into ``topic``."""
    cfg = demo_config(
        Path("unused"),
        speed=0,
        start=start,
        duration_s=1200,
        seed=seed,
        ticks_per_batch=10,
        disorder_fraction=0.02,
        disorder_max_delay_ms=60_000,
    )
    cfg["site"]["site"] = site
    cfg["sinks"] = [
        {"type": "kafka", "kafka": {"bootstrap_servers": bootstrap}, "topics": {"raw": topic}}
    ]
    run_main(build_flow(parse_site(cfg, base_dir=DEMO_SITE.parent)))


def _processor(bootstrap: str, topic: str, out: Path, **kafka_input: Any) -> dict[str, Any]:
    cfg = demo_config(out)
    for step in cfg["operators"]:
        if step["type"] == "aggregate":
            # Windows close on event time only: wall time must not change a replay.
            step["idle_close"] = False
    cfg["inputs"] = [
        {
            "type": "kafka",
            "kafka": {"bootstrap_servers": bootstrap},
            "topic": topic,
            "bounded": True,
            **kafka_input,
        }
    ]
    cfg["sinks"] = [{"type": "file", "dir": str(out), "streams": list(STREAMS)}]
    return cfg


def _site_file(directory: Path, cfg: dict[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for step in cfg["operators"]:
        for model in step.get("models", []):
            model["path"] = str(Path(model["path"]).resolve())
    path = directory / "site.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _results(out: Path) -> dict[str, Any]:
    """What a store that upserts on natural keys holds after the run, per stream.

    Files append, so a resumed run may repeat rows; the keys are what the database sinks
    upsert on. Aggregates and KPIs keep the last revision of each window.
    """
    got: dict[str, Any] = {}
    for stream in STREAMS:
        rows = [r for f in sorted(out.glob(f"{stream}*.jsonl")) for r in read_jsonl(f)]
        if stream == "aggregates":
            final: dict[tuple[Any, ...], dict[str, Any]] = {}
            for r in rows:
                k = (r["path"], r["window_ms"], r["start_ms"])
                if k not in final or r["revision"] >= final[k]["revision"]:
                    final[k] = r
            got[stream] = {k: json.dumps(v, sort_keys=True) for k, v in final.items()}
        else:
            if stream in ("late", "dead_letters"):
                # When it was refused (wall time) and which topic it came from are not results.
                rows = [_without_origin(r) for r in rows]
            got[stream] = {json.dumps(r, sort_keys=True) for r in rows}
    return got


def _without_origin(row: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in row.items() if k not in ("ts", "source")}
    if isinstance(out.get("payload"), dict):
        out["payload"] = {k: v for k, v in out["payload"].items() if k != "source"}
    return out


def _of_site(results: dict[str, Any], site: str) -> dict[str, Any]:
    prefix = f"acme/{site}"
    out: dict[str, Any] = {}
    for stream, rows in results.items():
        if isinstance(rows, dict):
            out[stream] = {k: v for k, v in rows.items() if k[0].startswith(prefix + "/")}
        else:
            out[stream] = {r for r in rows if f'"{prefix}/' in r or f'"{prefix}"' in r}
    return out


def _bytewax(site: Path, cwd: Path, *args: str, timeout_s: float = 240) -> None:
    proc = FlowProcess("flows.process", site, cwd=cwd, args=args)
    try:
        rc = proc.wait(timeout_s)
    finally:
        if proc.running():
            proc.kill()
    assert rc == 0, proc.log[-3000:]


@pytest.fixture(scope="module")
def four_sites(endpoints):
    """A 6-partition raw topic fed by four sites' edge flows (20 min of data each)."""
    _require_kafka(endpoints.kafka_bootstrap)
    topic = _topic(endpoints.kafka_bootstrap, 6)
    for i, site in enumerate(("north", "south", "east", "west")):
        _edge(endpoints.kafka_bootstrap, topic, site, seed=100 + i)
    return topic


@pytest.fixture(scope="module")
def one_worker(endpoints, four_sites, tmp_path_factory):
    """The reference: the processor on one worker."""
    d = tmp_path_factory.mktemp("one")
    site = _site_file(d, _processor(endpoints.kafka_bootstrap, four_sites, d / "out"))
    _bytewax(site, d)
    got = _results(d / "out")
    sites = {k[0].split("/")[1] for k in got["aggregates"]}
    assert sites == {"north", "south", "east", "west"}
    assert got["kpis"]
    assert got["events"]
    return got


def test_a_site_whose_data_arrives_after_the_others_loses_nothing_and_keeps_its_own_kpis(
    endpoints, tmp_path
):
    """Site B's edge flow delivers 20 min after site A's into the same partition: with one
    watermark B lost half its points to `late`; per shard, each site's results (aggregates,
    KPIs, events, late points) equal the results of the site alone."""
    bootstrap = endpoints.kafka_bootstrap
    _require_kafka(bootstrap)
    both, only_a, only_b = _topic(bootstrap, 1), _topic(bootstrap, 1), _topic(bootstrap, 1)
    _edge(bootstrap, both, "s-a", seed=1, start=LATER)  # A is ahead ...
    _edge(bootstrap, both, "s-b", seed=2)  # ... B's older data comes after it
    _edge(bootstrap, only_a, "s-a", seed=1, start=LATER)
    _edge(bootstrap, only_b, "s-b", seed=2)
    runs = {}
    for name, topic in (("both", both), ("a", only_a), ("b", only_b)):
        out = tmp_path / name
        run_main(
            build_flow(
                parse_site(_processor(bootstrap, topic, out), base_dir=DEMO_SITE.parent),
                name="process",
            )
        )
        runs[name] = _results(out)
    assert _of_site(runs["both"], "s-a") == runs["a"]
    assert _of_site(runs["both"], "s-b") == runs["b"]
    # Nothing of one site in another's results, and each site has its own KPIs.
    kpi_paths = Counter(json.loads(r)["path"].split("/")[1] for r in runs["both"]["kpis"])
    assert set(kpi_paths) == {"s-a", "s-b"}
    assert {r for r in runs["both"]["kpis"] if "performance_ratio" in r}
    n_aggs = len(runs["both"]["aggregates"])
    assert n_aggs == len(runs["a"]["aggregates"]) + len(runs["b"]["aggregates"])
    # The lagging site keeps its points: late only what the simulator sent late on purpose.
    assert len(runs["b"]["late"]) == len(_of_site(runs["both"], "s-b")["late"])


def test_two_workers_give_the_results_of_one(endpoints, four_sites, one_worker, tmp_path):
    site = _site_file(tmp_path, _processor(endpoints.kafka_bootstrap, four_sites, tmp_path / "out"))
    _bytewax(site, tmp_path, "-w", "2")
    assert _results(tmp_path / "out") == one_worker
    # Each worker read some of the topic's partitions: both wrote output.
    assert {p.name for p in (tmp_path / "out").glob("aggregates.w*.jsonl")} == {
        "aggregates.w0.jsonl",
        "aggregates.w1.jsonl",
    }


def _cluster(
    site: Path, cwd: Path, *, recovery: Path | None = None, workers: int = 1
) -> list[FlowProcess]:
    addresses = f"127.0.0.1:{free_port()};127.0.0.1:{free_port()}"
    return [
        FlowProcess(
            "flows.process",
            site,
            cwd=cwd,
            recovery=recovery,
            args=["-w", str(workers), "-i", str(i), "-a", addresses],
        )
        for i in range(2)
    ]


def _finish(procs: list[FlowProcess]) -> None:
    """Wait for every process of a bounded run; each must exit 0."""
    try:
        for p in procs:
            assert p.wait(240) == 0, p.log[-3000:]
    finally:
        for p in procs:
            if p.running():
                p.kill()


def test_a_two_process_cluster_gives_the_results_of_one_worker(
    endpoints, four_sites, one_worker, tmp_path
):
    site = _site_file(tmp_path, _processor(endpoints.kafka_bootstrap, four_sites, tmp_path / "out"))
    _finish(_cluster(site, tmp_path))
    assert _results(tmp_path / "out") == one_worker
    assert {p.name for p in (tmp_path / "out").glob("aggregates.w*.jsonl")} == {
        "aggregates.w0.jsonl",
        "aggregates.w1.jsonl",
    }


@pytest.mark.parametrize("resume_as", ["the same cluster", "one process (rescaled)"])
def test_a_cluster_killed_with_sigkill_resumes_to_the_results_of_one_worker(
    endpoints, tmp_path, resume_as
):
    """Two processes read a live topic; one is killed with SIGKILL mid-stream, the cluster is
    started again from its recovery store (as the same 2-process cluster, or rescaled to one
    process of one worker: bytewax moves each key's state to its new worker) and more data
    arrives: the outputs equal a single worker's uninterrupted run over the whole topic."""
    bootstrap = endpoints.kafka_bootstrap
    _require_kafka(bootstrap)
    topic = _topic(bootstrap, 6)
    _edge(bootstrap, topic, "north", seed=7)
    _edge(bootstrap, topic, "south", seed=8)
    recovery = tmp_path / "recovery"
    recovery.mkdir()
    subprocess.run([sys.executable, "-m", "bytewax.recovery", str(recovery), "2"], check=True)
    out = tmp_path / "out"
    live = _processor(bootstrap, topic, out, bounded=False)
    site = _site_file(tmp_path / "live", live)
    procs = _cluster(site, tmp_path, recovery=recovery)
    try:
        wait_until(
            lambda: len(_results(out)["aggregates"]) >= 500,
            timeout_s=120,
            what="the cluster's first aggregates",
        )
        start = committed_frontier(recovery) or 0
        wait_until(
            lambda: (committed_frontier(recovery) or 0) >= start + 2,
            timeout_s=60,
            what="two more committed epochs",
        )
        assert all(p.running() for p in procs)
        procs[1].kill()
        procs[0].kill()
    finally:
        for p in procs:
            if p.running():
                p.kill()
    # More data arrives while the cluster is down; the resumed run reads to the end.
    _edge(bootstrap, topic, "north", seed=7, start=LATER)
    _edge(bootstrap, topic, "south", seed=8, start=LATER)
    resumed = _site_file(tmp_path / "resumed", _processor(bootstrap, topic, out))
    if resume_as == "the same cluster":
        _finish(_cluster(resumed, tmp_path, recovery=recovery))
    else:
        _finish([FlowProcess("flows.process", resumed, cwd=tmp_path, recovery=recovery)])
    ref = tmp_path / "ref"
    run_main(build_flow(parse_site(_processor(bootstrap, topic, ref), base_dir=DEMO_SITE.parent)))
    assert _results(out) == _results(ref)


def test_data_deleted_by_retention_fails_a_replay_and_is_a_dead_letter_live(endpoints):
    """Offsets a resume needs were deleted (retention, here ``delete_records``): a bounded
    replay ends with a clear error instead of spinning; a live reader reports one dead letter
    and goes on from the oldest offset the broker still holds."""
    from confluent_kafka import TopicPartition

    from connectors.errors import SourceError
    from connectors.kafka.config import KafkaConnection, KafkaInput
    from connectors.kafka.source import KafkaPointsSource
    from wire.records import DeadLetter, PointBatch

    bootstrap = endpoints.kafka_bootstrap
    _require_kafka(bootstrap)
    topic = _topic(bootstrap, 1)
    _edge(bootstrap, topic, "north", seed=3)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    (deleted,) = admin.delete_records([TopicPartition(topic, 0, 10)]).values()
    assert deleted.result(30).low_watermark == 10

    def source(*, bounded: bool) -> KafkaPointsSource:
        conn = KafkaConnection(bootstrap_servers=bootstrap)
        return KafkaPointsSource(KafkaInput(type="kafka", kafka=conn, topic=topic, bounded=bounded))

    replay = source(bounded=True)
    with pytest.raises(SourceError, match=r"no longer holds offsets 4\.\.9 .*retention"):
        replay.build_part("in", f"{topic}:0", 4)
    live = source(bounded=False)
    part = live.build_part("in", f"{topic}:0", 4)
    try:
        first = part.next_batch()
        assert [type(x) for x in first] == [DeadLetter]
        assert "retention deleted offsets 4..9" in first[0].reason
        batches = wait_until(part.next_batch, timeout_s=10, what="points after the gap")
        assert all(isinstance(b, PointBatch) for b in batches)
        assert part.snapshot() > 10
    finally:
        part.close()


def test_a_partition_batch_stops_at_its_byte_budget(endpoints):
    """A replay finds a partition's whole prefetch queue ready: a batch takes messages up to
    ``batch_max_bytes`` (one at least), not ``batch_size`` of them, and every point is read."""
    import numpy as np
    from confluent_kafka import Producer

    from connectors.kafka.config import KafkaConnection, KafkaInput
    from connectors.kafka.source import KafkaPointsSource
    from wire.points import encode_messages
    from wire.records import PointBatch, TagRef, to_ms

    bootstrap = endpoints.kafka_bootstrap
    _require_kafka(bootstrap)
    topic = _topic(bootstrap, 1)
    tags = tuple(TagRef(f"acme/north/pv/inv-1/t{i:03d}", "kW") for i in range(100))
    producer = Producer({"bootstrap.servers": bootstrap})
    sizes = []
    for m in range(40):  # 40 messages of 1,000 points
        ts = to_ms(START) + m * 10_000 + np.repeat(np.arange(10), 100) * 1000
        batch = PointBatch(
            tags,
            np.tile(np.arange(100, dtype=np.int32), 10),
            ts.astype(np.int64),
            np.arange(1000, dtype=np.float64),
            np.zeros(1000, np.uint8),
        )
        ((key, value, newest),) = encode_messages(batch, shard_levels=3, max_points=1000)
        producer.produce(topic, key=key.encode(), value=value, timestamp=newest)
        sizes.append(len(value))
    assert producer.flush(30) == 0
    budget = 5 * max(sizes)
    conn = KafkaConnection(bootstrap_servers=bootstrap)
    src = KafkaPointsSource(
        KafkaInput(type="kafka", kafka=conn, topic=topic, bounded=True, batch_max_bytes=budget)
    )
    part = src.build_part("in", f"{topic}:0", None)
    points: list[int] = []
    try:
        while True:
            try:
                got = part.next_batch()
            except StopIteration:
                break
            n = sum(len(b) for b in got if isinstance(b, PointBatch))
            if n:
                points.append(n)
    finally:
        part.close()
    assert sum(points) == 40_000
    # Never far past the budget (a message or so), and not the whole partition at once.
    assert max(points) <= 7_000
    assert len(points) >= 6


def test_500_sites_close_their_windows_on_their_own_data(endpoints, tmp_path):
    """500 sites of 20 tags in one topic, one live processor: every site's 1-minute windows
    close as its own points pass them (before the flow is stopped), none of them late."""
    import numpy as np
    from confluent_kafka import Producer

    from wire.points import encode_messages
    from wire.records import PointBatch, TagRef

    bootstrap = endpoints.kafka_bootstrap
    _require_kafka(bootstrap)
    topic = _topic(bootstrap, 6)
    sites, tags_per_site, minutes = 500, 20, 4
    tags = tuple(
        TagRef(f"acme/site-{s:03d}/pv/a/inv-01/t{k:02d}", "kW")
        for s in range(sites)
        for k in range(tags_per_site)
    )
    start = 1_780_304_400_000
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
    for sec in range(0, minutes * 60 + 10, 10):  # ten seconds per message and site
        ts = start + (sec + np.repeat(np.arange(10), len(tags))) * 1000
        idx = np.tile(np.arange(len(tags), dtype=np.int32), 10)
        batch = PointBatch(
            tags, idx, ts.astype(np.int64), idx.astype(np.float64), np.zeros(len(idx), np.uint8)
        )
        for key, value, newest in encode_messages(batch):
            producer.produce(topic, key=key.encode(), value=value, timestamp=newest)
            producer.poll(0)
    producer.flush(60)
    cfg = {
        "name": "many",
        "site": {"enterprise": "acme", "site": "any"},
        "inputs": [{"type": "kafka", "kafka": {"bootstrap_servers": bootstrap}, "topic": topic}],
        "operators": [
            {"type": "validate", "max_future_ms": None, "max_past_ms": None},
            {"type": "aggregate", "allowed_lateness_ms": 5000, "idle_close": False},
        ],
        "sinks": [
            {
                "type": "file",
                "dir": str(tmp_path / "out"),
                "streams": ["aggregates", "late", "dead_letters"],
            }
        ],
    }
    site = _site_file(tmp_path, cfg)
    proc = FlowProcess("flows.process", site, cwd=tmp_path)
    want = {
        (f"acme/site-{s:03d}", start + m * 60_000) for s in range(sites) for m in range(minutes)
    }
    try:

        def closed() -> bool:
            assert proc.running(), proc.log[-3000:]
            rows = read_jsonl(tmp_path / "out" / "aggregates.jsonl")
            got = {("/".join(r["path"].split("/")[:2]), r["start_ms"]) for r in rows}
            return want <= got

        wait_until(closed, timeout_s=120, what="every site's first four windows", every_s=0.5)
        assert proc.running()  # closed by each site's own data, not by the end of input
        proc.signal()
        assert proc.wait(30) == 0, proc.log[-3000:]
    finally:
        if proc.running():
            proc.kill()
    rows = read_jsonl(tmp_path / "out" / "aggregates.jsonl")
    per_window = Counter((r["path"], r["start_ms"]) for r in rows if r["closed_by"] != "eof")
    assert len(per_window) == sites * tags_per_site * minutes
    assert set(per_window.values()) == {1}  # each window once, never reopened
    assert read_jsonl(tmp_path / "out" / "late.jsonl") == []


def test_two_processors_on_disjoint_partitions_give_the_results_of_one(
    endpoints, four_sites, one_worker, tmp_path
):
    """The site-file way to split a topic between independent processors (`partitions`):
    each shard lives in one partition, so the union of their outputs is one worker's."""
    union: dict[str, Any] = {s: ({} if s == "aggregates" else set()) for s in STREAMS}
    for half in ([0, 1, 2], [3, 4, 5]):
        out = tmp_path / f"p{half[0]}"
        cfg = _processor(endpoints.kafka_bootstrap, four_sites, out, partitions=half)
        d = tmp_path / f"run{half[0]}"
        _bytewax(_site_file(d, cfg), d)
        for stream, rows in _results(out).items():
            union[stream].update(rows)
    assert union == one_worker
