"""Backtesting: replay a raw Kafka topic over a time range through a site's operator chain.

``python -m flows.backtest --site SITE.yaml --from T1 --to T2 --out DIR [--compare OLD.json]``

The site file names the raw topic (its ``kafka`` input) and the operators to test, possibly
with other thresholds than live; its sinks receive the results (give them their own topics or
schema). The replay seeks each partition by time, keeps points with ``T1 <= ts < T2``, runs
with pure event-time windows (no wall-clock closing) and writes ``DIR/*.jsonl`` plus
``DIR/report.json``: counts, the anomalies and alarms raised, and a digest of the final
aggregates. With ``--compare`` the report also says what changed against an earlier report.
Replaying the same data twice gives the same digest.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from bytewax.testing import run_main

from flows.build import build_flow
from flows.config import load_site, parse_site
from flows.errors import ConfigError
from wire.records import ms_to_iso, to_ms

__all__ = ["backtest", "final_rows", "main"]


def _read(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def final_rows(rows: list[dict[str, Any]]) -> dict[tuple[str, int, int], dict[str, Any]]:
    """Keep the last revision of each window: ``(path, window_ms, start_ms) -> row``."""
    out: dict[tuple[str, int, int], dict[str, Any]] = {}
    for r in rows:
        key = (r["path"], r["window_ms"], r["start_ms"])
        if key not in out or r.get("revision", 0) >= out[key].get("revision", 0):
            out[key] = r
    return out


def _digest(rows: dict[tuple[str, int, int], dict[str, Any]]) -> str:
    h = hashlib.sha256()
    skip = {"revision", "closed_by"}
    for key in sorted(rows):
        h.update(
            json.dumps(
                {k: v for k, v in rows[key].items() if k not in skip}, sort_keys=True
            ).encode()
        )
    return h.hexdigest()


def _replay_site(site: Any, start_ms: int, end_ms: int, out: Path) -> Any:
    data = site.model_dump(by_alias=True)
    data["inputs"] = [i.for_replay(start_ms, end_ms).model_dump(by_alias=True) for i in site.inputs]
    data["operators"] = [o.for_replay().model_dump(by_alias=True) for o in site.operators]
    data["sinks"] = [
        *data["sinks"],
        {
            "type": "file",
            "id": "backtest_report",
            "dir": str(out),
            "streams": [
                s
                for s in ("aggregates", "events", "kpis", "late", "dead_letters")
                if s in site.emitted_streams()
            ],
        },
    ]
    return parse_site(data, source=site.source_file or "<backtest>")


def _iso(ms: int) -> str:
    return ms_to_iso(ms).replace("Z", "+00:00")


def backtest(
    site: Any, *, start_ms: int, end_ms: int, out: Path, compare: Path | None = None
) -> dict[str, Any]:
    """Run the replay and return (and write) the report."""
    if end_ms <= start_ms:
        msg = "--to must be after --from"
        raise ConfigError(msg)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.jsonl"):
        old.unlink()
    run_main(build_flow(_replay_site(site, start_ms, end_ms, out), name="backtest"))  # type: ignore[no-untyped-call]
    aggs = final_rows(_read(out / "aggregates.jsonl"))
    events = _read(out / "events.jsonl")
    raised = sorted(
        (e["kind"], e["rule"], e["path"], e["ts_ms"]) for e in events if e["state"] == "raised"
    )
    report: dict[str, Any] = {
        "site": site.name,
        "from": _iso(start_ms),
        "to": _iso(end_ms),
        "aggregates": dict(Counter(f"{r['window']}" for r in aggs.values())),
        "points_aggregated_1m": sum(r["count"] for r in aggs.values() if r["window_ms"] == 60_000),
        "events": dict(Counter(f"{e['kind']}:{e['rule']}:{e['state']}" for e in events)),
        "raised": [list(r) for r in raised],
        "late": len(_read(out / "late.jsonl")),
        "dead_letters": len(_read(out / "dead_letters.jsonl")),
        "kpis": len(_read(out / "kpis.jsonl")),
        "aggregates_digest": _digest(aggs),
    }
    if compare is not None:
        prev = json.loads(compare.read_text())
        before = {tuple(r) for r in prev["raised"]}
        now = {tuple(r) for r in report["raised"]}
        report["comparison"] = {
            "against": str(compare),
            "same_aggregates": prev["aggregates_digest"] == report["aggregates_digest"],
            "raised_only_now": sorted(list(r) for r in now - before),
            "raised_only_before": sorted(list(r) for r in before - now),
            "events_delta": {
                k: report["events"].get(k, 0) - prev["events"].get(k, 0)
                for k in sorted(set(report["events"]) | set(prev["events"]))
                if report["events"].get(k, 0) != prev["events"].get(k, 0)
            },
        }
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(
        prog="python -m flows.backtest", description=__doc__.splitlines()[0]
    )
    p.add_argument("--site", type=Path, required=True, help="site YAML with a kafka input")
    p.add_argument(
        "--from",
        dest="start",
        required=True,
        help="ISO-8601 with offset, e.g. 2026-06-01T09:00:00Z",
    )
    p.add_argument("--to", dest="end", required=True)
    p.add_argument("--out", type=Path, default=Path("backtest-out"))
    p.add_argument("--compare", type=Path, help="report.json of an earlier run")
    a = p.parse_args(argv)
    try:
        report = backtest(
            load_site(a.site),
            start_ms=to_ms(a.start),
            end_ms=to_ms(a.end),
            out=a.out,
            compare=a.compare,
        )
    except ConfigError as e:
        print(f"edgeflow backtest: {e}", file=sys.stderr)
        return 2
    summary = {k: report[k] for k in ("aggregates", "late", "dead_letters", "aggregates_digest")}
    summary["raised"] = len(report["raised"])
    if "comparison" in report:
        summary["comparison"] = report["comparison"]
    print(json.dumps(summary, indent=2))
    print(f"report: {a.out / 'report.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
