"""The backtest report's plotted series stay bounded and keep the extremes of long histories."""

from __future__ import annotations

from pathlib import Path

from reports.collector import MAX_SERIES_POINTS, Collector


def test_a_long_series_is_merged_into_buckets_that_keep_its_extremes(tmp_path: Path) -> None:
    c = Collector(tmp_path / "r.sqlite", plot=("site/x/t",))
    n = 2 * MAX_SERIES_POINTS + 7  # two and a bit windows per plotted point
    rows = [
        {
            "path": "site/x/t",
            "window_ms": 60_000,
            "start_ms": i * 60_000,
            "count": 1,
            "mean": float(i % 100),
            "min": -5.0 if i == 4_321 else float(i % 100),
            "max": 500.0 if i == n - 1 else float(i % 100),
        }
        for i in range(n)
    ]
    c.add("aggregates", rows)
    s = c.finish()["series"]["site/x/t"]
    c.close()
    assert s["every"] == 3
    assert len(s["t"]) == -(-n // 3) <= MAX_SERIES_POINTS
    assert s["t"][:2] == [0, 180_000]
    # the band holds the single lowest and highest windows, wherever they fall
    assert min(s["min"]) == -5.0 and max(s["max"]) == 500.0
    assert s["mean"][0] == 1.0  # mean of the means 0, 1, 2


def test_tag_names_cannot_break_out_of_the_report_script() -> None:
    from reports.html import render

    evil = "acme/site/a/b/</script><img src=x onerror=alert(1)>"
    report = {
        "site": "acme/site",
        "from": "2026-01-01T00:00:00Z",
        "to": "2026-01-02T00:00:00Z",
        "points_read": 1,
        "late": 0,
        "dead_letters": 0,
        "series": {evil: {"t": [0], "mean": [1.0], "min": [1.0], "max": [1.0]}},
        "markers": [],
        "events": {},
        "kpis": {},
        "energy": {},
        "late_reasons": {},
        "dead_letter_reasons": {},
        "digests": {},
    }
    page = render(report)
    assert "<img" not in page and page.count("</script>") == 2  # plotly.js and the figure
    assert "\\u003c/script\\u003e\\u003cimg src=x onerror=alert(1)\\u003e" in page
