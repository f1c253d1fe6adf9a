"""Operators on a real recording (the openoa package's La Haute Borne wind farm SCADA history,
installed by ``infra/local/install.sh``), checked against pandas and injected anomalies.

The levels asserted are the ones reached (``python -m bench.realdata`` prints them; the README
quotes them): a regression in a rule shows as a drop here.
"""

from __future__ import annotations

from typing import Any

import pytest

from bench.realdata import RECORDING, aggregate_check, detection, percentile_check


@pytest.fixture(scope="module")
def recording() -> None:
    assert RECORDING.is_file(), f"{RECORDING}: run infra/local/install.sh (it fetches it)"


def test_hourly_aggregates_and_energy_of_two_years_match_pandas(recording: None) -> None:
    r: dict[str, Any] = aggregate_check()
    assert r["worst_relative_error"] < 1e-9  # count exact; mean, min, max of every hour
    assert set(r["energy"]) == {"R80711", "R80721", "R80736", "R80790"}
    for turbine, e in r["energy"].items():
        # Energy adds up: hours and local days sum to the trapezoid over the whole series.
        for total in (e["hourly_sum_kwh"], e["daily_sum_kwh"]):
            assert abs(total - e["trapezoid_kwh"]) <= 1e-9 * e["trapezoid_kwh"], turbine
        assert e["trapezoid_kwh"] > 5e6
    days = r["energy"]["R80711"]
    assert days["days"] == 731
    assert days["hours_of"] == {"2014-03-30": 23.0, "2014-10-26": 25.0, "2014-06-01": 24.0}


def test_rules_find_the_anomalies_injected_into_real_data(recording: None) -> None:
    d = detection()
    for rule in ("flatline", "stale", "clipping", "gap"):
        assert d[rule]["recall"] == 1.0, (rule, d[rule])
    assert d["clipping"]["precision"] == 1.0
    assert d["flatline"]["precision"] >= 0.9
    # The data's own gaps (16) and frozen wind speeds (24) are found too, and nothing else.
    assert (d["gap_all"]["episodes"], d["stale_all"]["episodes"]) == (10 + 16, 10 + 24)
    assert d["gap_all"] == {**d["gap_all"], "precision": 1.0, "recall": 1.0}
    assert d["stale_all"] == {**d["stale_all"], "precision": 1.0, "recall": 1.0}
    # A backward-looking Hampel filter on gusty 10-minute wind: most spikes, many gust fronts.
    assert d["outlier"]["recall"] >= 0.9 and d["outlier"]["precision"] >= 0.1


def test_hourly_and_daily_percentiles_of_two_years_match_pandas(recording: None) -> None:
    r = percentile_check()
    # p50, p95, p99 of every turbine's power in every hour and UTC day, all of them.
    assert r["compared"] == r["rows"] > 4 * 3 * 17_000
    assert r["worst_relative_error"] < 1e-12
