"""Failure behaviour against real PostgreSQL: a kill -9 with recovery, and a database outage."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import psycopg
import pytest
import yaml
from bytewax.testing import run_main

from flows.build import build_flow
from flows.config import DEMO_SITE, parse_site
from tests.conftest import require_port
from tests.faults import service, wait_until
from tests.integration.test_edge_flow import demo_config

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _pg(endpoints) -> None:
    info = psycopg.conninfo.conninfo_to_dict(endpoints.pg_dsn)
    require_port(info.get("host", "127.0.0.1"), int(info.get("port", 5432)), "PostgreSQL")


def site_with_db(endpoints, schema: str, out: Path, **sim) -> dict:
    cfg = demo_config(out, **sim)
    cfg["sinks"] = [
        {
            "type": "timescaledb",
            "dsn": endpoints.pg_dsn,
            "schema": schema,
            "streams": ["raw", "aggregates", "events", "kpis"],
        }
    ]
    return cfg


def snapshot_tables(dsn: str, schema: str) -> dict[str, set]:
    with psycopg.connect(dsn) as conn:
        return {
            "points": set(conn.execute(f'select path, ts, value, quality from "{schema}".points')),
            "aggregates": set(
                conn.execute(
                    f"select path, window_ms, start_ts, count, min, max, mean, std, sum, first, last, "
                    f'twa, energy from "{schema}".aggregates'
                )
            ),
            # Connection-state events say when things happened on the wall clock: a run with
            # a fault has more of them by design. The data's events must be identical.
            "events": set(
                conn.execute(
                    f'select kind, rule, path, ts, state, message from "{schema}".events '
                    "where kind not in ('source', 'spool')"
                )
            ),
            "kpis": set(
                conn.execute(f'select path, name, window_ms, start_ts, value from "{schema}".kpis')
            ),
        }


def _points(dsn: str, schema: str) -> int:
    try:
        with psycopg.connect(dsn, connect_timeout=2) as conn:
            row = conn.execute(f'select count(*) from "{schema}".points').fetchone()
    except psycopg.errors.UndefinedTable:
        return 0
    return int(row[0]) if row else 0


def drop(dsn: str, *schemas: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for s in schemas:
            conn.execute(f'drop schema if exists "{s}" cascade')


def run_cli(site_file: Path, recovery: Path, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "EDGEFLOW_SITE": str(site_file), "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bytewax.run",
            "flows.edge",
            "-r",
            str(recovery),
            "-s",
            "1",
            "-b",
            "0",
        ],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_kill_9_and_resume_gives_the_same_rows_as_an_uninterrupted_run(endpoints, tmp_path):
    _pg(endpoints)
    run = uuid.uuid4().hex[:8]
    killed, clean = f"rec_{run}", f"ref_{run}"
    sim = {
        "start": "2026-06-01T10:00:00Z",
        "duration_s": 1800,
        "ticks_per_batch": 5,
        "disorder_fraction": 0.01,
        "disorder_max_delay_ms": 30_000,
    }
    try:
        run_main(
            build_flow(
                parse_site(
                    site_with_db(endpoints, clean, tmp_path, speed=0, **sim),
                    base_dir=DEMO_SITE.parent,
                )
            )
        )
        site_file = tmp_path / "site.yaml"
        site_file.write_text(
            yaml.safe_dump(site_with_db(endpoints, killed, tmp_path, speed=150, **sim))
        )
        recovery = tmp_path / "recovery"
        recovery.mkdir()
        subprocess.run([sys.executable, "-m", "bytewax.recovery", str(recovery), "1"], check=True)
        proc = run_cli(site_file, recovery, tmp_path)
        wait_until(
            lambda: _points(endpoints.pg_dsn, killed) >= 1800 * 29 // 3,
            timeout_s=60,
            what="a third of the points in the database",
        )
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        partial = snapshot_tables(endpoints.pg_dsn, killed)
        assert 0 < len(partial["points"]) < 1800 * 29, "the kill should land mid-stream"
        proc = run_cli(site_file, recovery, tmp_path)
        _, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err[-3000:]
        got = snapshot_tables(endpoints.pg_dsn, killed)
        want = snapshot_tables(endpoints.pg_dsn, clean)
        assert len(want["points"]) == 1800 * 29
        for table in want:
            assert got[table] == want[table], (table, len(got[table]), len(want[table]))
    finally:
        drop(endpoints.pg_dsn, killed, clean)


def test_postgres_down_for_30_s_loses_nothing(endpoints, tmp_path):
    _pg(endpoints)
    schema = f"out_{uuid.uuid4().hex[:8]}"
    sim = {"start": "2026-06-01T10:00:00Z", "duration_s": 3600, "ticks_per_batch": 10}
    site_file = tmp_path / "site.yaml"
    site_file.write_text(yaml.safe_dump(site_with_db(endpoints, schema, tmp_path, speed=60, **sim)))
    env = {**os.environ, "EDGEFLOW_SITE": str(site_file), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "bytewax.run", "flows.edge"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(
            lambda: _points(endpoints.pg_dsn, schema) > 0,
            timeout_s=60,
            what="the first points in the database",
        )
        service("stop", "postgres")
        threading.Event().wait(30)  # the outage's length, not a synchronisation
        assert proc.poll() is None, "the flow must keep running while the database is down"
    finally:
        service("start", "postgres")
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-3000:]
    # One line when the database went away and one when it came back, not one per attempt.
    assert err.count("timescaledb: connected to postgresql://127.0.0.1:15432/") == 1
    assert err.count(" is down: ") == 1 and err.count(" is back after ") == 1
    try:
        got = snapshot_tables(endpoints.pg_dsn, schema)
        assert len(got["points"]) == 3600 * 29
        assert len(got["aggregates"]) == (60 + 4) * 29
    finally:
        drop(endpoints.pg_dsn, schema)
