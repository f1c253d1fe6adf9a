"""The backtest report as one self-contained HTML page (plotly, no network needed to view it)."""

from __future__ import annotations

import html
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

__all__ = ["render"]

_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left;font-size:90%}
th{background:#f3f3f3} .num{text-align:right} h2{margin-top:1.5em}
"""


def _times(ms: list[int]) -> Any:
    # Epoch ms as numbers on a date axis: plotly embeds them as a typed array, where datetimes
    # would become one string each (tens of MB for a long history).
    return np.asarray(ms, np.float64)


def _table(head: list[str], rows: list[list[Any]]) -> str:
    if not rows:
        return "<p><i>none</i></p>"
    h = "".join(f"<th>{html.escape(str(c))}</th>" for c in head)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="num">{c:,.4g}</td>'
            if isinstance(c, float)
            else f'<td class="num">{c:,}</td>'
            if isinstance(c, int)
            else f"<td>{html.escape(str(c))}</td>"
            for c in r
        )
        + "</tr>"
        for r in rows
    )
    return f"<table><tr>{h}</tr>{body}</table>"


def _add_series(
    fig: go.Figure, row: int, col: int, s: dict[str, Any], markers: list[dict[str, Any]], who: str
) -> None:
    t = _times(s["t"])
    band = {"mode": "lines", "showlegend": False}
    lines = (
        ("max", {"line": {"width": 0}, "hoverinfo": "skip"}),
        (
            "min",
            {
                "line": {"width": 0},
                "hoverinfo": "skip",
                "fill": "tonexty",
                "fillcolor": "rgba(31,119,180,0.15)",
            },
        ),
        ("mean", {"line": {"width": 1.2, "color": "#1f77b4"}}),
    )
    for stat, style in lines:
        fig.add_trace(
            go.Scatter(
                x=t, y=np.asarray(s[stat], np.float64), name=f"{who} {stat}", **band, **style
            ),
            row=row,
            col=col,
        )
    for state, symbol, color in (
        ("raised", "triangle-up", "#d62728"),
        ("cleared", "circle-open", "#2ca02c"),
    ):
        ms = [m for m in markers if m["state"] == state]
        if not ms:
            continue
        ys = [m["value"] if m["value"] is not None else _near(s, m["ts_ms"]) for m in ms]
        fig.add_trace(
            go.Scatter(
                x=_times([m["ts_ms"] for m in ms]),
                y=ys,
                mode="markers",
                marker={"symbol": symbol, "size": 10, "color": color},
                text=[f"{m['kind']} {m['rule']}: {m['message']}" for m in ms],
                hoverinfo="text+x",
                name=f"{who} {state}",
                showlegend=False,
            ),
            row=row,
            col=col,
        )


def _near(s: dict[str, Any], ts_ms: int) -> float | None:
    if not s["t"]:
        return None
    i = int(np.clip(np.searchsorted(np.asarray(s["t"]), ts_ms), 0, len(s["t"]) - 1))
    v = s["mean"][i]
    return None if v is None else float(v)


def _figure(report: dict[str, Any], before: dict[str, Any] | None) -> str:
    paths = list(report["series"])
    if before is not None:
        paths += [p for p in before.get("series", {}) if p not in paths]
    if not paths:
        return "<p><i>no aggregates to plot</i></p>"
    cols = 1 if before is None else 2
    titles = []
    for p in paths:
        short = "/".join(p.split("/")[2:])
        titles += [f"before: {short}", f"now: {short}"] if cols == 2 else [short]
    fig = make_subplots(
        rows=len(paths),
        cols=cols,
        shared_xaxes=True,
        subplot_titles=titles,
        vertical_spacing=min(0.08, 0.3 / len(paths)),
    )
    for i, p in enumerate(paths, start=1):
        runs = [(report, "now", cols)] + ([(before, "before", 1)] if before is not None else [])
        for run, who, col in runs:
            s = run.get("series", {}).get(p)
            if s is not None:
                marks = [m for m in run.get("markers", []) if m["path"] == p]
                _add_series(fig, i, col, s, marks, who)
    fig.update_xaxes(type="date")
    fig.update_layout(
        height=260 * len(paths) + 80,
        margin={"l": 50, "r": 20, "t": 40, "b": 30},
        hovermode="closest",
        template="plotly_white",
    )
    return str(fig.to_html(include_plotlyjs=True, full_html=False, div_id="edgeflow-plots"))


def render(report: dict[str, Any], before: dict[str, Any] | None = None) -> str:
    """Return the HTML page of ``report`` (and, with ``before``, the comparison)."""
    esc = html.escape
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>edgeflow backtest: "
        f"{esc(report['site'])}</title><style>{_CSS}</style></head><body>",
        f"<h1>Backtest of {esc(report['site'])}</h1>",
        f"<p>{esc(report['from'])} to {esc(report['to'])}: "
        f"{report['points_read']:,} points read, {report['late']:,} late, "
        f"{report['dead_letters']:,} dead letters.</p>",
    ]
    cmp = report.get("comparison")
    if cmp is not None:
        parts.append(f"<h2>What changed against {esc(cmp['against'])}</h2>")
        same = "identical" if cmp["same_aggregates"] else "different"
        parts.append(f"<p>Aggregates: <b>{same}</b>.</p>")
        parts.append("<h3>Events raised only now</h3>")
        parts.append(_table(["kind", "rule", "path", "time"], cmp["raised_only_now"][:200]))
        parts.append("<h3>Events raised only before</h3>")
        parts.append(_table(["kind", "rule", "path", "time"], cmp["raised_only_before"][:200]))
        parts.append("<h3>Event counts</h3>")
        parts.append(
            _table(
                ["event", "before", "now"],
                [[k, v["before"], v["now"]] for k, v in cmp["events"].items()],
            )
        )
        parts.append("<h3>KPIs (mean over windows)</h3>")
        parts.append(
            _table(
                ["kpi@window_ms", "before", "now"],
                [[k, v["before"], v["now"]] for k, v in cmp["kpis"].items()],
            )
        )
    parts.append("<h2>Plots</h2>")
    parts.append("<p>Window mean with its min-max band; red: raised, green: cleared.</p>")
    parts.append(_figure(report, before))
    tables = [
        ("<h2>Events</h2>", ["event", "count"], list(report["events"].items())),
        (
            "<h2>KPIs</h2>",
            ["kpi@window_ms", "windows", "mean", "min", "max"],
            [(k, v["windows"], v["mean"], v["min"], v["max"]) for k, v in report["kpis"].items()],
        ),
        (
            "<h2>Energy (sum of base windows)</h2>",
            ["tag", "energy", "unit"],
            [(p, v["energy"], v["unit"]) for p, v in report["energy"].items()],
        ),
        (
            "<h2>Late points and dead letters</h2>",
            ["late: reason", "count"],
            list(report["late_reasons"].items()),
        ),
        ("", ["dead letter: reason", "count"], list(report["dead_letter_reasons"].items())),
    ]
    for title, head, rows in tables:
        parts.append(title)
        parts.append(_table(head, [list(r) for r in rows]))
    parts.append("<h2>Digests</h2>")
    parts.append(_table(["stream", "sha256"], [[k, v] for k, v in report["digests"].items()]))
    parts.append("</body></html>")
    return "\n".join(parts)
