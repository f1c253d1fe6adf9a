"""Backtesting: replay recorded history through a site's operator chain, with a report.

``edgeflow backtest --site SITE.yaml [--file HISTORY.csv] [--from T1] [--to T2] --out DIR
[--compare OLD/report.json] [--plot GLOB]...``

The site's inputs must hold history: a ``file`` input (CSV or Parquet; ``--file`` puts one in
place of the site's inputs) or a ``kafka`` input on a raw topic. The range defaults to all the
history the inputs hold; a range they do not hold entirely (history starting after ``--from``,
deleted by retention, or no data at all) is refused before anything runs, and a run that reads
no point fails: never "0 points, exit 0". The replay runs with pure event-time windows (no
wall-clock closing), shows a progress bar (data hours, points/s, ETA), and writes
``DIR/*.jsonl`` (every result), ``DIR/report.json`` and ``DIR/report.html`` (plots of chosen
tags with anomaly and alarm markers; with ``--compare``, before and now side by side and what
changed). Replaying the same history gives the same digests, whatever the batching.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bytewax.testing import run_main

from flows.build import build_flow
from flows.config import load_site, parse_site
from flows.errors import ConfigError, FlowError
from wire.errors import EdgeflowError
from wire.records import ms_to_iso, to_ms

__all__ = ["BacktestError", "backtest", "final_rows", "main"]

_RESULTS = ("aggregates", "events", "kpis", "late", "dead_letters")


class BacktestError(FlowError):
    """The backtest cannot give a true answer (missing history, nothing read)."""


def final_rows(rows: list[dict[str, Any]]) -> dict[tuple[str, int, int], dict[str, Any]]:
    """Keep the last revision of each window: ``(path, window_ms, start_ms) -> row``."""
    out: dict[tuple[str, int, int], dict[str, Any]] = {}
    for r in rows:
        key = (r["path"], r["window_ms"], r["start_ms"])
        if key not in out or r.get("revision", 0) >= out[key].get("revision", 0):
            out[key] = r
    return out


def _with_file(data: dict[str, Any], file: Path) -> dict[str, Any]:
    files = [i for i in data["inputs"] if i.get("type") == "file"]
    if files:
        return {**data, "inputs": [{**files[0], "path": str(file)}]}
    return {**data, "inputs": [{"type": "file", "id": "history", "path": str(file)}]}


def _range(site: Any, start_ms: int | None, end_ms: int | None) -> tuple[int, int]:
    """Return the replayed range: what was asked, checked against what the inputs hold."""
    first: int | None = None
    last: int | None = None
    notes = []
    for inp in site.inputs:
        h = inp.history()
        if h.note:
            notes.append(f"{inp.id}: {h.note}")
        if h.first_ms is not None:
            first = h.first_ms if first is None else min(first, h.first_ms)
        if h.last_ms is not None:
            last = h.last_ms if last is None else max(last, h.last_ms)
    why = f" ({'; '.join(notes)})" if notes else ""
    if first is None or last is None:
        msg = f"the inputs hold no data to replay{why}"
        raise BacktestError(msg)
    start = first if start_ms is None else start_ms
    end = last + 1 if end_ms is None else end_ms
    if start < first:
        msg = (
            f"the history starts at {ms_to_iso(first)}, after --from {ms_to_iso(start)}{why}: "
            f"the replay would silently miss the start; use --from {ms_to_iso(first)} or later"
        )
        raise BacktestError(msg)
    if start > last:
        msg = f"the history ends at {ms_to_iso(last)}, before --from {ms_to_iso(start)}"
        raise BacktestError(msg)
    if end <= start:
        msg = f"--to ({ms_to_iso(end)}) must be after --from ({ms_to_iso(start)})"
        raise BacktestError(msg)
    return start, end


def _replay_site(site: Any, start_ms: int, end_ms: int, out: Path, report: dict[str, Any]) -> Any:
    data = site.model_dump(by_alias=True)
    data["inputs"] = [i.for_replay(start_ms, end_ms).model_dump(by_alias=True) for i in site.inputs]
    data["operators"] = [o.for_replay().model_dump(by_alias=True) for o in site.operators]
    streams = [s for s in _RESULTS if s in site.emitted_streams()]
    data["sinks"] = [
        *data["sinks"],
        {"type": "file", "id": "backtest_files", "dir": str(out), "streams": streams},
        {"type": "backtest_report", "id": "backtest_report", "dir": str(out), **report},
    ]
    return parse_site(data, source=site.source_file or "<backtest>")


def backtest(
    site: Any,
    *,
    start_ms: int | None = None,
    end_ms: int | None = None,
    out: Path,
    compare: Path | None = None,
    file: Path | None = None,
    plot: Sequence[str] = (),
    progress: bool = False,
) -> dict[str, Any]:
    """Run the replay and return the report (also in ``out/report.json`` and ``.html``)."""
    if file is not None:
        site = parse_site(
            _with_file(site.model_dump(by_alias=True), file),
            source=site.source_file or "<backtest>",
        )
    start, end = _range(site, start_ms, end_ms)
    if compare is not None and not compare.is_file():
        msg = f"--compare {compare}: no such report"
        raise BacktestError(msg)
    out.mkdir(parents=True, exist_ok=True)
    for old in (*out.glob("*.jsonl"), out / "report.json", out / "report.html"):
        old.unlink(missing_ok=True)
    options = {
        "from_ms": start,
        "to_ms": end,
        "plot": list(plot),
        "compare": None if compare is None else str(compare),
        "progress": progress,
    }
    run_main(build_flow(_replay_site(site, start, end, out, options), name="backtest"))  # type: ignore[no-untyped-call]
    report: dict[str, Any] = json.loads((out / "report.json").read_text())
    if not report["points_read"]:
        msg = (
            f"no point of the inputs lies in [{ms_to_iso(start)}, {ms_to_iso(end)}): "
            "nothing was tested"
        )
        raise BacktestError(msg)
    return report


def summary(report: dict[str, Any], out: Path) -> str:
    """Return the one-screen summary printed at the end of a backtest."""
    lines = [
        f"backtest of {report['site']}: {report['from']} .. {report['to']}",
        f"  points read      {report['points_read']:>12,}",
        *(
            f"  windows {w:<8} {n:>12,}  ({report['points_aggregated'].get(w, 0):,} points)"
            for w, n in report["aggregates"].items()
        ),
        f"  late points      {report['late']:>12,}",
        f"  dead letters     {report['dead_letters']:>12,}",
        f"  events raised    {len(report['raised']):>12,}",
    ]
    by_rule: dict[str, int] = {}
    for kind, rule, _path, _ts in report["raised"]:
        by_rule[f"{kind}:{rule}"] = by_rule.get(f"{kind}:{rule}", 0) + 1
    lines += [f"    {k:<40} {v:>6,}" for k, v in sorted(by_rule.items())]
    for name, k in list(report["kpis"].items())[:8]:
        mean = k["mean"]
        lines.append(f"  kpi {name:<28} mean {mean:.4g}" if mean is not None else f"  kpi {name}")
    cmp = report.get("comparison")
    if cmp is not None:
        lines.append(f"  against {cmp['against']}:")
        lines.append(f"    aggregates {'identical' if cmp['same_aggregates'] else 'DIFFERENT'}")
        lines.append(
            f"    raised only now: {len(cmp['raised_only_now'])}, "
            f"only before: {len(cmp['raised_only_before'])}"
        )
        for k, v in cmp["kpis"].items():
            lines.append(f"    kpi {k}: {v['before']} -> {v['now']}")
    lines.append(f"report: {out / 'report.html'} (data: {out / 'report.json'})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(prog="edgeflow backtest", description=__doc__.splitlines()[0])
    p.add_argument("--site", type=Path, required=True, help="site YAML (file or kafka input)")
    p.add_argument("--file", type=Path, help="CSV or Parquet history instead of the inputs")
    p.add_argument("--from", dest="start", help="ISO 8601 with offset (default: start of data)")
    p.add_argument("--to", dest="end", help="exclusive end (default: end of data)")
    p.add_argument("--out", type=Path, default=Path("backtest-out"))
    p.add_argument("--compare", type=Path, help="report.json of an earlier run")
    p.add_argument("--plot", action="append", default=[], help="tag glob to plot (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    try:
        report = backtest(
            load_site(a.site),
            start_ms=None if a.start is None else to_ms(a.start),
            end_ms=None if a.end is None else to_ms(a.end),
            out=a.out,
            compare=a.compare,
            file=a.file,
            plot=a.plot,
            progress=not a.no_progress,
        )
    except (ConfigError, BacktestError) as e:
        print(f"edgeflow backtest: {e}", file=sys.stderr)
        return 2
    except EdgeflowError as e:  # a source that cannot deliver (broker down, unreadable file)
        print(f"edgeflow backtest: {e}", file=sys.stderr)
        return 1
    print(summary(report, a.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
