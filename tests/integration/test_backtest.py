"""Backtests as a user runs them: CSV -> HTML report, loading a topic, exact and loud replays.

The report is opened in headless Chromium (the Debian package): the plots must render. Replays
are compared by the report's digests, which cover aggregates (final revision), KPIs, events,
late points and dead letters; they must not change with how the history was cut into batches,
messages and partitions.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from connectors.files.config import FileInput
from connectors.kafka.load import LoadError, load
from flows.backtest import BacktestError, backtest
from flows.config import parse_site
from simulators.history import write_history
from wire.records import to_ms

REPO = Path(__file__).resolve().parents[2]
SITE = REPO / "flows" / "sites" / "backtest.yaml"
START = "2026-06-01T00:00:00Z"


def edgeflow(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=240,
    )


def site_data(**changes: Any) -> dict[str, Any]:
    data = yaml.safe_load(SITE.read_text())
    data.update(changes)
    return data


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("hist") / "history.csv"
    write_history(path, start_ms=to_ms(START), days=2, interval_s=60)
    return path


def test_csv_to_html_report_in_two_commands(tmp_path: Path) -> None:
    """The README's first backtest example, as typed, with the report opened in Chromium."""
    sim = edgeflow("sim", "history", "--days", "2", "--out", "history.csv", cwd=tmp_path)
    assert sim.returncode == 0, sim.stderr
    run = edgeflow(
        "backtest", "--site", str(SITE), "--file", "history.csv", "--out", "bt", cwd=tmp_path
    )
    assert run.returncode == 0, run.stderr
    # the progress bar: data hours of the range, rate and ETA; then the one-screen summary
    assert re.search(r"backtest \(data hours\): 100%.*48\.0/48\.0 h", run.stderr)
    assert "points/s" in run.stderr
    assert re.search(r"points read\s+83,520", run.stdout)
    assert re.search(r"alarm:inverter-over-temperature\s+2\b", run.stdout)
    report = json.loads((tmp_path / "bt" / "report.json").read_text())
    assert report["points_read"] == 83_520 and report["late"] == 0
    assert report["aggregates"] == {"1m": 83_520, "15m": 83_520 // 15}

    chromium = shutil.which("chromium")
    assert chromium is not None, "infra/local/install.sh installs chromium"
    dom = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=15000",
            "--dump-dom",
            (tmp_path / "bt" / "report.html").as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    plotted = list(report["series"])
    assert len(plotted) == 4
    # every plotted tag is drawn: a subplot title, a line, and the event markers
    titles = re.findall(r'data-unformatted="([^"]+)"', dom)
    for path in plotted:
        assert "/".join(path.split("/")[2:]) in titles
    # the time axis shows dates (times are embedded as epoch ms on a date axis)
    assert any("Jun 1, 2026" in t for t in titles)
    assert len(re.findall(r'class="js-line"', dom)) >= 3 * len(plotted)
    assert len(re.findall(r'class="point"', dom)) >= 2 * len(report["raised"])


def test_compare_shows_what_a_new_threshold_changes(history: Path, tmp_path: Path) -> None:
    site = parse_site(site_data(), base_dir=SITE.parent)
    before = backtest(site, file=history, out=tmp_path / "before")
    data = site_data()
    alarm = next(o for o in data["operators"] if o["type"] == "alarm")
    alarm["rules"][0]["limit"] = 45  # the normal midday peak (about 55 C) now alarms
    after = backtest(
        parse_site(data, base_dir=SITE.parent),
        file=history,
        out=tmp_path / "after",
        compare=tmp_path / "before" / "report.json",
        plot=["*/pv/*/temperature"],
    )
    assert list(after["series"]) == [
        "acme/demo-solar/pv/array-1/inv-01/temperature",
        "acme/demo-solar/pv/array-2/inv-02/temperature",
    ]
    cmp = after["comparison"]
    assert cmp["same_aggregates"] is True
    gained = {tuple(r[:2]) for r in cmp["raised_only_now"]}
    assert gained == {("alarm", "inverter-over-temperature")}
    # the fault at 11:00 now falls inside an episode that began in the morning
    assert [r[3] for r in cmp["raised_only_before"]] == [
        to_ms("2026-06-01T11:00:00Z"),
        to_ms("2026-06-02T11:00:00Z"),
    ]
    assert before["raised"] and cmp["events"]["alarm:inverter-over-temperature:raised"]
    page = (tmp_path / "after" / "report.html").read_text()
    assert "What changed against" in page
    assert "before: pv/array-1/inv-01/temperature" in page


def test_a_range_the_history_does_not_hold_is_refused(history: Path, tmp_path: Path) -> None:
    site = parse_site(site_data(), base_dir=SITE.parent)
    with pytest.raises(BacktestError, match=r"history starts at 2026-06-01T00:00:00.000Z, after"):
        backtest(site, file=history, start_ms=to_ms("2026-05-31T00:00:00Z"), out=tmp_path / "a")
    with pytest.raises(BacktestError, match=r"history ends at 2026-06-02T23:59:00.000Z"):
        backtest(site, file=history, start_ms=to_ms("2026-06-05T00:00:00Z"), out=tmp_path / "b")
    # a hole in the data: the range is inside the file's span, but holds no point
    gap = tmp_path / "gap.csv"
    gap.write_text("time,x\n2026-06-01T00:00:00Z,1\n2026-06-03T00:00:00Z,2\n")
    with pytest.raises(BacktestError, match=r"no point of the inputs lies in"):
        backtest(
            site,
            file=gap,
            start_ms=to_ms("2026-06-02T00:00:00Z"),
            end_ms=to_ms("2026-06-02T12:00:00Z"),
            out=tmp_path / "c",
        )
    run = edgeflow(
        "backtest",
        "--site",
        str(SITE),
        "--file",
        str(history),
        "--from",
        "2026-05-01T00:00:00Z",
        "--out",
        "x",
        cwd=tmp_path,
    )
    assert run.returncode == 2 and "edgeflow backtest: the history starts at" in run.stderr


def test_a_file_input_runs_in_an_edge_flow_like_any_input(history: Path, tmp_path: Path) -> None:
    data = site_data(
        sinks=[
            {
                "type": "file",
                "dir": str(tmp_path / "out"),
                "streams": ["aggregates", "dead_letters"],
            }
        ]
    )
    data["inputs"][0]["path"] = str(history)
    site_file = tmp_path / "site.yaml"
    site_file.write_text(yaml.safe_dump(data))
    run = subprocess.run(
        [sys.executable, "-m", "bytewax.run", "flows.edge"],
        cwd=tmp_path,
        env={**__import__("os").environ, "EDGEFLOW_SITE": str(site_file)},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 0, run.stderr
    rows = [json.loads(x) for x in (tmp_path / "out" / "aggregates.jsonl").read_text().splitlines()]
    assert sum(r["count"] for r in rows if r["window"] == "15m" and r["revision"] == 0) == 83_520
    assert (tmp_path / "out" / "dead_letters.jsonl").read_text() == ""


# -- the Kafka spine ------------------------------------------------------------------------


def disordered_long_history(path: Path) -> int:
    """Six tags, one day at 1 min, 3% of the samples written up to 3 min late (as a real
    historian export with store-and-forward would), in the long layout."""
    rng = np.random.default_rng(11)
    tags = [
        "pv/array-1/inv-01/ac_power",
        "pv/array-1/inv-01/temperature",
        "storage/bess/bess-01/soc",
        "grid/poc/meter-01/voltage",
        "load/lv-panel/panel-01/active_power",
        "weather/met/met-01/irradiance",
    ]
    t0 = to_ms(START)
    minutes = np.arange(24 * 60)
    rows = []
    for j, tag in enumerate(tags):
        base = [40, 45, 60, 400, 70, 500][j]
        values = base + 10 * np.sin(minutes / 90 + j) + rng.normal(0, 1, len(minutes))
        if tag.endswith("temperature"):
            values[600:640] += 45  # an over-temperature episode
        for m, v in zip(minutes.tolist(), values.tolist(), strict=True):
            rows.append((t0 + m * 60_000, tag, v))
    order = np.arange(len(rows), dtype=np.float64)
    late = rng.random(len(rows)) < 0.03
    order[late] += rng.integers(1, 19, late.sum()) * len(tags)  # up to 3 min later
    lines = ["time,tag,value"]
    for i in np.argsort(order, kind="stable").tolist():
        ts, tag, v = rows[i]
        lines.append(f"{ts},{tag},{v:.6f}")
    path.write_text("\n".join(lines) + "\n")
    return len(rows)


def long_site(path: Path, inputs: list[dict[str, Any]] | None = None) -> Any:
    data = site_data()
    data["site"] = {**data["site"], "shard": "machine"}
    data["inputs"] = inputs or [
        {
            "type": "file",
            "id": "history",
            "path": str(path),
            "layout": "long",
            "time": {"column": "time", "format": "epoch_ms"},
        }
    ]
    return parse_site(data, base_dir=SITE.parent)


@pytest.mark.integration
def test_replays_are_exact_whatever_the_batches_messages_and_partitions(
    endpoints: Any, tmp_path: Path
) -> None:
    path = tmp_path / "long.csv"
    n = disordered_long_history(path)
    file_site = long_site(path)
    file_input = next(i for i in file_site.inputs if isinstance(i, FileInput))
    runs: dict[str, dict[str, Any]] = {}
    for rows in (7, 613, 1_000_000):
        site = long_site(path, [{**file_input.model_dump(), "batch_points": rows}])
        runs[f"file/{rows} rows"] = backtest(site, out=tmp_path / f"file{rows}")
    for partitions, span_s, fetch in ((1, 3600, 50), (3, 60, 1), (3, 1800, 7), (3, 1800, 7)):
        topic = f"bt.{uuid.uuid4().hex[:8]}"
        load(
            file_input,
            ("acme", "demo-solar"),
            bootstrap=endpoints.kafka_bootstrap,
            topic=topic,
            partitions=partitions,
            shard_levels=5,
            message_span_s=span_s,
        )
        site = long_site(
            path,
            [
                {
                    "type": "kafka",
                    "kafka": {"bootstrap_servers": endpoints.kafka_bootstrap},
                    "topic": topic,
                    "batch_size": fetch,
                }
            ],
        )
        runs[f"kafka/{partitions}p/{span_s}s/{fetch}"] = backtest(
            site, out=tmp_path / f"kafka{len(runs)}"
        )
    first = next(iter(runs.values()))
    assert first["points_read"] == n
    assert first["late"] > 0 and first["raised"], "the history must exercise late points and events"
    for name, report in runs.items():
        assert report["digests"] == first["digests"], name
        assert report["raised"] == first["raised"], name


@pytest.mark.integration
def test_load_refuses_a_topic_that_would_delete_the_history(endpoints: Any, history: Path) -> None:
    admin = AdminClient({"bootstrap.servers": endpoints.kafka_bootstrap})
    week, stamped = f"bt.week.{uuid.uuid4().hex[:6]}", f"bt.append.{uuid.uuid4().hex[:6]}"
    futures = admin.create_topics(
        [
            NewTopic(week, 1, 1, config={"retention.ms": str(7 * 86_400_000)}),
            NewTopic(
                stamped,
                1,
                1,
                config={"retention.ms": "-1", "message.timestamp.type": "LogAppendTime"},
            ),
        ]
    )
    for f in futures.values():
        f.result(10)
    cfg = FileInput(type="file", path=str(history))
    with pytest.raises(LoadError, match=r"keeps messages for 7 days .* would delete it"):
        load(cfg, ("acme", "demo-solar"), bootstrap=endpoints.kafka_bootstrap, topic=week)
    with pytest.raises(LoadError, match=r"LogAppendTime"):
        load(cfg, ("acme", "demo-solar"), bootstrap=endpoints.kafka_bootstrap, topic=stamped)
    # nothing was written to either
    from confluent_kafka import Consumer

    c = Consumer({"bootstrap.servers": endpoints.kafka_bootstrap, "group.id": "x"})
    for t in (week, stamped):
        assert c.get_watermark_offsets(TopicPartition(t, 0), timeout=10) == (0, 0)
    c.close()


@pytest.mark.integration
def test_backtest_of_a_topic_that_lost_its_start_or_holds_nothing_fails(
    endpoints: Any, history: Path, tmp_path: Path
) -> None:
    admin = AdminClient({"bootstrap.servers": endpoints.kafka_bootstrap})
    topic, empty = f"bt.cut.{uuid.uuid4().hex[:6]}", f"bt.empty.{uuid.uuid4().hex[:6]}"
    admin.create_topics([NewTopic(empty, 1, 1)])[empty].result(10)
    load(
        FileInput(type="file", path=str(history)),
        ("acme", "demo-solar"),
        bootstrap=endpoints.kafka_bootstrap,
        topic=topic,
    )
    # what retention does to an old history: the first messages are deleted
    admin.delete_records([TopicPartition(topic, 0, 10)])[TopicPartition(topic, 0, 10)].result(10)

    def site(t: str) -> Any:
        data = site_data()
        data["inputs"] = [
            {"type": "kafka", "kafka": {"bootstrap_servers": endpoints.kafka_bootstrap}, "topic": t}
        ]
        return parse_site(data, base_dir=SITE.parent)

    with pytest.raises(
        BacktestError,
        match=rf"after --from .*retention deleted {topic}:0 "
        r"offsets 0\.\.9",
    ):
        backtest(site(topic), start_ms=to_ms(START), out=tmp_path / "a")
    with pytest.raises(BacktestError, match=r"the inputs hold no data to replay"):
        backtest(site(empty), out=tmp_path / "b")
    # without --from the replay covers what is left, and says where it starts
    rest = backtest(site(topic), out=tmp_path / "c")
    assert (
        rest["from"] == "2026-06-01T10:00:00.000Z" and rest["points_read"] == 83_520 - 10 * 60 * 29
    )


def test_daily_figures_of_a_site_follow_its_local_midnight(history: Path, tmp_path: Path) -> None:
    data = site_data()
    data["site"] = {**data["site"], "timezone": "Europe/Berlin"}
    agg = next(o for o in data["operators"] if o["type"] == "aggregate")
    agg["rollup_ms"] = [900_000, 86_400_000]
    backtest(parse_site(data, base_dir=SITE.parent), file=history, out=tmp_path / "bt")
    rows = [json.loads(x) for x in (tmp_path / "bt" / "aggregates.jsonl").read_text().splitlines()]
    tag = "acme/demo-solar/pv/array-1/inv-01/ac_power"
    days = sorted(
        (r for r in rows if r["window"] == "1d" and r["path"] == tag), key=lambda r: r["start_ms"]
    )
    # 2 days of data from 2026-06-01T00:00Z (02:00 in Berlin, UTC+2) touch 3 local days
    assert [r["start_local"] for r in days] == [
        "2026-06-01T00:00:00+02:00",
        "2026-06-02T00:00:00+02:00",
        "2026-06-03T00:00:00+02:00",
    ]
    assert [r["start"] for r in days] == [
        "2026-05-31T22:00:00.000Z",
        "2026-06-01T22:00:00.000Z",
        "2026-06-02T22:00:00.000Z",
    ]
    assert [r["count"] for r in days] == [1320, 1440, 120]  # from 02:00 local, to 02:00 local
