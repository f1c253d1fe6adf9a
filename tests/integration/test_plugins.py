"""A separately installed package adds an input and a sink through the entry point group."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "plugin_pkg"


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Install the fixture package (not this repository) into a directory of its own."""
    work = tmp_path_factory.mktemp("plugin")
    src = work / "src"
    shutil.copytree(FIXTURE, src)
    target = work / "site-packages"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(src),
        ],
        check=True,
        capture_output=True,
    )
    assert (target / "edgeflow_fixture_plugin" / "components.py").is_file()
    return target


def _env(plugin_path: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{plugin_path}{os.pathsep}{ROOT}", **extra}


def test_a_flow_runs_with_an_input_and_a_sink_from_another_package(plugin_path, tmp_path):
    site = {
        "name": "plugged",
        "site": {"enterprise": "acme", "site": "lab"},
        "inputs": [{"type": "ramp", "count": 600}],
        "operators": [
            {"type": "validate", "max_past_ms": None, "max_future_ms": None},
            {"type": "aggregate", "rollup_ms": [], "allowed_lateness_ms": 0, "idle_close": False},
        ],
        "sinks": [{"type": "csv", "dir": str(tmp_path / "out"), "streams": ["aggregates"]}],
    }
    site_file = tmp_path / "site.yaml"
    site_file.write_text(yaml.safe_dump(site))
    proc = subprocess.run(
        [sys.executable, "-m", "bytewax.run", "flows.edge"],
        env=_env(plugin_path, EDGEFLOW_SITE=str(site_file)),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with (tmp_path / "out" / "aggregates.csv").open() as f:
        rows = list(csv.reader(f))
    # 600 one-second points of 0..599: ten 1-minute windows of 60 points, mean 29.5 + 60 k.
    assert [(int(r[2]), float(r[3])) for r in rows] == [(60, 29.5 + 60 * k) for k in range(10)]
    assert {r[0] for r in rows} == {"acme/lab/test/line/ramp-01/ramp"}


def test_the_edgeflow_command_lists_and_checks_plugin_components(plugin_path, tmp_path):
    listed = subprocess.run(
        [sys.executable, "-m", "flows.cli", "components", "ramp", "csv"],
        env=_env(plugin_path),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "input ramp: Values 0, 1, 2, ..." in listed
    assert "sink csv: Rows of the subscribed streams" in listed
    assert "[edgeflow_fixture_plugin.components]" in listed
    site_file = tmp_path / "bad.yaml"
    site_file.write_text(
        yaml.safe_dump(
            {
                "name": "bad",
                "site": {"enterprise": "acme", "site": "lab"},
                "inputs": [{"type": "ramp", "count": "many"}],
                "sinks": [{"type": "csv", "dir": str(tmp_path), "streams": ["kpis"]}],
            }
        )
    )
    proc = subprocess.run(
        [sys.executable, "-m", "flows.cli", "check", str(site_file)],
        env=_env(plugin_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "inputs.0.ramp.count" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_custom_operators_transform_points_and_add_streams(tmp_path):
    from bytewax.testing import run_main

    from flows.build import build_flow
    from flows.config import parse_site

    site = parse_site(
        {
            "name": "custom",
            "site": {"enterprise": "acme", "site": "lab"},
            "inputs": [
                {
                    "type": "simulator",
                    "speed": 0,
                    "start": "2026-06-01T10:00:00Z",
                    "duration_s": 120,
                    "ticks_per_batch": 60,
                }
            ],
            "operators": [
                {
                    "type": "custom",
                    "id": "double",
                    "callable": "tests.fixtures.custom_ops:scale_points",
                    "params": {"factor": 2.0},
                },
                {
                    "type": "custom",
                    "id": "counter",
                    "callable": "tests.fixtures.custom_ops:count_batches",
                    "emits": ["events"],
                },
                {"type": "aggregate", "rollup_ms": [], "idle_close": False},
            ],
            "sinks": [
                {"type": "file", "dir": str(tmp_path), "streams": ["raw", "aggregates", "events"]}
            ],
        }
    )
    run_main(build_flow(site))
    from tests.integration.test_edge_flow import read_jsonl

    raw = read_jsonl(tmp_path / "raw.jsonl")
    aggs = read_jsonl(tmp_path / "aggregates.jsonl")
    events = [e for e in read_jsonl(tmp_path / "events.jsonl") if e["kind"] == "custom"]
    raw_sum = {}
    for r in raw:
        raw_sum[(r["path"], r["ts_ms"] // 60_000)] = (
            raw_sum.get((r["path"], r["ts_ms"] // 60_000), 0) + r["value"]
        )
    for a in aggs:
        assert a["sum"] == pytest.approx(
            2 * raw_sum[(a["path"], a["start_ms"] // 60_000)], rel=1e-12
        )
    assert len(aggs) == 2 * 29 and len(events) == 2  # two 60-tick batches


def test_edgeflow_run_runs_a_site(tmp_path):
    site = {
        "name": "run",
        "site": {"enterprise": "acme", "site": "lab"},
        "inputs": [
            {
                "type": "simulator",
                "speed": 0,
                "start": "2026-06-01T10:00:00Z",
                "duration_s": 120,
                "ticks_per_batch": 60,
            }
        ],
        "operators": [{"type": "aggregate", "rollup_ms": [], "idle_close": False}],
        "sinks": [{"type": "file", "dir": "out", "streams": ["aggregates"]}],
    }
    site_file = tmp_path / "site.yaml"
    site_file.write_text(yaml.safe_dump(site))
    proc = subprocess.run(
        [sys.executable, "-m", "flows.cli", "run", str(site_file), "-w", "1"],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len((tmp_path / "out" / "aggregates.jsonl").read_text().splitlines()) == 2 * 29
