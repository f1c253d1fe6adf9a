"""The backtest report as one self-contained HTML page (plotly, no network needed to view it)."""

from __future__ import annotations

import bisect
import html
import pkgutil
from typing import Any

import orjson

__all__ = ["render"]

_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left;font-size:90%}
th{background:#f3f3f3} .num{text-align:right} h2{margin-top:1.5em}
"""


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
    traces: list[dict[str, Any]],
    axes: tuple[str, str],
    s: dict[str, Any],
    markers: list[dict[str, Any]],
    who: str,
) -> None:
    # Times are epoch ms on a date axis: numbers, not one string per point.
    x, y = axes
    band = {"type": "scatter", "mode": "lines", "showlegend": False, "xaxis": x, "yaxis": y}
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
        traces.append({**band, **style, "x": s["t"], "y": s[stat], "name": f"{who} {stat}"})
    for state, symbol, color in (
        ("raised", "triangle-up", "#d62728"),
        ("cleared", "circle-open", "#2ca02c"),
    ):
        ms = [m for m in markers if m["state"] == state]
        if not ms:
            continue
        traces.append(
            {
                "type": "scatter",
                "mode": "markers",
                "xaxis": x,
                "yaxis": y,
                "x": [m["ts_ms"] for m in ms],
                "y": [m["value"] if m["value"] is not None else _near(s, m["ts_ms"]) for m in ms],
                "marker": {"symbol": symbol, "size": 10, "color": color},
                "text": [f"{m['kind']} {m['rule']}: {m['message']}" for m in ms],
                "hoverinfo": "text+x",
                "name": f"{who} {state}",
                "showlegend": False,
            }
        )


def _near(s: dict[str, Any], ts_ms: int) -> float | None:
    t: list[int] = s["t"]
    if not t:
        return None
    i = min(bisect.bisect_left(t, ts_ms), len(t) - 1)
    v = s["mean"][i]
    return None if v is None else float(v)


def _plotly_js() -> str:
    # The plotly.js bundle of the plotly package, read as a file: importing plotly's Python
    # side for it costs more memory than the whole report.
    data = pkgutil.get_data("plotly", "package_data/plotly.min.js")
    assert data is not None
    return data.decode()


def _figure(report: dict[str, Any], before: dict[str, Any] | None) -> str:
    """Return the plots as a plotly.js figure.

    Its JSON is built here: plotly's Python figure objects hold several copies of every series
    while validating them (tens of MB at the end of a long backtest).
    """
    paths = list(report["series"])
    if before is not None:
        paths += [p for p in before.get("series", {}) if p not in paths]
    if not paths:
        return "<p><i>no aggregates to plot</i></p>"
    cols = 1 if before is None else 2
    rows = len(paths)
    gap = min(0.08, 0.3 / rows)
    height = (1 - gap * (rows - 1)) / rows
    layout: dict[str, Any] = {
        "height": 260 * rows + 80,
        "margin": {"l": 50, "r": 20, "t": 40, "b": 30},
        "hovermode": "closest",
        "plot_bgcolor": "white",
        "annotations": [],
    }
    traces: list[dict[str, Any]] = []
    width = (1 - 0.05 * (cols - 1)) / cols
    for i, p in enumerate(paths):
        top = 1 - i * (height + gap)
        short = "/".join(p.split("/")[2:])
        runs = [(report, "now", cols)] + ([(before, "before", 1)] if before is not None else [])
        for run, who, col in runs:
            n = i * cols + col
            x, y = ("x", "y") if n == 1 else (f"x{n}", f"y{n}")
            left = (col - 1) * (width + 0.05)
            grid = {"gridcolor": "#eee", "zeroline": False}
            layout[f"xaxis{'' if n == 1 else n}"] = {
                **grid,
                "type": "date",
                "domain": [left, left + width],
                "anchor": y,
                **({} if n == 1 else {"matches": "x"}),
                "showticklabels": i == rows - 1,
            }
            layout[f"yaxis{'' if n == 1 else n}"] = {
                **grid,
                "domain": [top - height, top],
                "anchor": x,
            }
            title = short if cols == 1 else f"{who}: {short}"
            layout["annotations"].append(
                {
                    "text": title,
                    "showarrow": False,
                    "xref": "paper",
                    "yref": "paper",
                    "x": left + width / 2,
                    "y": top,
                    "xanchor": "center",
                    "yanchor": "bottom",
                    "font": {"size": 14},
                }
            )
            s = run.get("series", {}).get(p) if run is not None else None
            if s is not None:
                marks = [m for m in run.get("markers", []) if m["path"] == p]
                _add_series(traces, (x, y), s, marks, who)
    # Inside <script>: no "<", ">" or "&" of a tag name may end the script or open a tag.
    figure = (
        orjson.dumps({"data": traces, "layout": layout})
        .decode()
        .replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
    )
    return (
        f"<script>{_plotly_js()}</script>"
        '<div id="edgeflow-plots"></div>'
        f"<script>(function(){{var f={figure};"
        "Plotly.newPlot('edgeflow-plots',f.data,f.layout,{responsive:true});})();</script>"
    )


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
