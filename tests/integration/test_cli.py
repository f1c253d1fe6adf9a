"""The edgeflow command and the flows' entry points: one clear line and exit 2 on any mistake."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from flows.config import DEMO_SITE

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None):
    return subprocess.run(
        [sys.executable, *args],
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def assert_one_line_error(proc, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "panicked" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("edgeflow: ")]
    assert len(errors) == 1, proc.stderr[-2000:]
    for needle in needles:
        assert needle in proc.stderr, proc.stderr[-2000:]


def test_check_passes_on_every_shipped_site():
    sites = sorted(str(p) for p in (ROOT / "flows" / "sites").glob("*.yaml"))
    proc = run("-m", "flows.cli", "check", *sites)
    assert proc.returncode == 0, proc.stderr
    for site in sites:
        assert f"{site}: ok" in proc.stdout
    assert "kpi (kpi): aggregates -> kpis, events" in proc.stdout
    assert "file (file) <- aggregates, kpis, events, late, dead_letters" in proc.stdout


def test_check_lists_every_problem_of_a_broken_site(tmp_path: Path):
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        yaml.safe_dump(
            {
                "name": "broken",
                "site": {"enterprise": "acme", "site": "s1", "timezone": "Mars/Olympus"},
                "inputs": [{"type": "simulator", "interval_ms": 0}],
                "operators": [{"type": "aggregate", "window_ms": 60000, "rollup_ms": [90000]}],
                "sinks": [{"type": "console", "streams": ["aggregates", "nope"]}],
            }
        )
    )
    proc = run("-m", "flows.cli", "check", str(broken))
    assert_one_line_error(
        proc,
        f"edgeflow: invalid site config {broken}:",
        "site.timezone: Value error, unknown time zone 'Mars/Olympus'",
        "inputs.0.simulator.interval_ms",
        "operators.0.aggregate: Value error, rollup_ms 90000 must be a multiple",
        "sinks.0.console.streams.1: Value error, unknown stream 'nope'",
    )


def _demo_data() -> dict:
    data = yaml.safe_load(DEMO_SITE.read_text())
    for step in data["operators"]:
        for model in step.get("models", []):
            model["path"] = str((DEMO_SITE.parent / model["path"]).resolve())
    return data


def _demo(tmp_path: Path, **changes) -> Path:
    data = _demo_data()
    data.update(changes)
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_model_that_does_not_fit_its_features_is_a_config_error(tmp_path: Path):
    data = _demo_data()
    at = next(i for i, o in enumerate(data["operators"]) if o["type"] == "inference")
    inference = data["operators"][at]
    inference["features"] = inference["features"][:3]
    site = _demo(tmp_path, operators=data["operators"])
    proc = run("-m", "bytewax.run", "flows.edge", env={"EDGEFLOW_SITE": str(site)}, cwd=tmp_path)
    assert_one_line_error(
        proc, f"edgeflow: {site}: operators.{at}: model fault_probability expects 7 features"
    )


def test_a_bad_log_level_is_a_config_error(tmp_path: Path):
    proc = run("-m", "bytewax.run", "flows.edge", env={"EDGEFLOW_LOG_LEVEL": "loud"}, cwd=tmp_path)
    assert_one_line_error(proc, "edgeflow: EDGEFLOW_LOG_LEVEL: 'loud' is not a log level")


def test_a_bad_topic_template_is_a_config_error(tmp_path: Path):
    site = _demo(
        tmp_path,
        inputs=[{"type": "mqtt", "host": "127.0.0.1", "topics": [{"template": "p/{colour}"}]}],
    )
    proc = run("-m", "bytewax.run", "flows.edge", env={"EDGEFLOW_SITE": str(site)}, cwd=tmp_path)
    assert_one_line_error(proc, "inputs.0.mqtt.topics.0", "must contain {tag}")


def test_components_lists_every_type_with_options_and_a_sample():
    proc = run("-m", "flows.cli", "components")
    assert proc.returncode == 0, proc.stderr
    for line in (
        "input simulator:",
        "input opcua:",
        "operator aggregate:",
        "sink timescaledb:",
        "      allowed_lateness_ms: integer = 5000",
        "    sample:",
    ):
        assert line in proc.stdout


def test_unknown_commands_and_types_fail_clearly(tmp_path: Path):
    assert_one_line_error(run("-m", "flows.cli", "fly"), "unknown command 'fly'")
    site = _demo(tmp_path, inputs=[{"type": "carrier-pigeon"}])
    assert_one_line_error(
        run("-m", "flows.cli", "check", str(site)), "does not match any of the expected tags"
    )
