import dataclasses

import pytest

from operators._state import WindowSequencer
from operators.aggregate.logic import TumblingAggregator
from operators.kpi.config import KpiOp
from operators.kpi.logic import KpiCalculator
from wire.records import PointBatch, TagRef

SITE = "acme/s1"
IRR = TagRef(f"{SITE}/weather/met/met-01/irradiance", "W/m2")
PV1 = TagRef(f"{SITE}/pv/a1/inv-01/ac_power", "kW")
PV2 = TagRef(f"{SITE}/pv/a2/inv-02/ac_power", "kW")
LOAD = TagRef(f"{SITE}/load/lv/panel-01/active_power", "kW")
BESS = TagRef(f"{SITE}/storage/bess/bess-01/power", "kW")
PF = TagRef(f"{SITE}/grid/poc/meter-01/power_factor", "")


def strings(machine, currents):
    return {
        TagRef(f"{SITE}/pv/a1/{machine}/string{i + 1}_current", "A"): c
        for i, c in enumerate(currents)
    }


def window(values: dict, start_ms=0):
    """Constant values over a minute (two samples: start and end of the span)."""
    tags = tuple(values)
    rows = [
        (i, t, values[tag]) for i, tag in enumerate(tags) for t in (start_ms, start_ms + 60_000 - 1)
    ]
    b = PointBatch(
        tags, [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], [0] * len(rows)
    )
    agg = TumblingAggregator(rollup_ms=(), idle_close=False)
    agg.add(b, 0)
    (w,) = agg.flush()
    return w


def calculator(config, **kw):
    """The calculator as the flow runs it: events and running totals on final windows."""
    return WindowSequencer(KpiCalculator(config, **kw))


def by_name(kpis):
    return {(k.name, k.path): k.value for k in kpis}


def test_site_kpis():
    w = window({IRR: 800.0, PV1: 70.0, PV2: 70.0, LOAD: 200.0, BESS: 20.0, PF: 0.95})
    kpis, events = calculator(KpiOp(type="kpi", rated_kw=200)).process(w)
    got = by_name(kpis)
    assert got[("performance_ratio", SITE)] == pytest.approx(140 / (200 * 0.8))
    assert got[("renewable_share", SITE)] == pytest.approx(0.7)
    assert got[("power_factor", f"{SITE}/grid/poc/meter-01")] == pytest.approx(0.95)
    assert ("battery_round_trip_efficiency", SITE) not in got  # nothing charged yet
    assert events == []


def test_no_performance_ratio_in_the_dark():
    w = window({IRR: 10.0, PV1: 0.1})
    assert "performance_ratio" not in {k.name for k in calculator(KpiOp(type="kpi")).process(w)[0]}


def test_round_trip_efficiency_is_cumulative():
    calc = calculator(KpiOp(type="kpi"))
    calc.process(window({BESS: -60.0}, 0))  # charge 1 kWh
    kpis, _ = calc.process(window({BESS: 54.0}, 60_000))  # discharge 0.9 kWh
    assert by_name(kpis)[("battery_round_trip_efficiency", SITE)] == pytest.approx(0.9, rel=1e-3)


@pytest.mark.parametrize(
    ("currents", "imbalance", "states"),
    [
        ([8.0, 8.0, 8.0, 8.0], 0.0, []),
        ([8.0, 8.0, 8.0, 4.0], 3.0 / 7.0, ["raised"]),
        ([0.1, 0.1, 0.1, 0.0], None, []),  # night: below the minimum current
    ],
)
def test_string_imbalance(currents, imbalance, states):
    kpis, events = calculator(KpiOp(type="kpi")).process(window(strings("inv-01", currents)))
    got = by_name(kpis).get(("string_imbalance", f"{SITE}/pv/a1/inv-01"))
    assert got == (None if imbalance is None else pytest.approx(imbalance))
    assert [e.state for e in events] == states


def test_imbalance_event_clears_with_hysteresis():
    calc = calculator(KpiOp(type="kpi", imbalance_threshold=0.2))
    seq = [[8, 8, 8, 4], [8, 8, 8, 7], [8, 8, 8, 6.9], [8, 8, 8, 8]]
    states = []
    for k, cur in enumerate(seq):
        states += [
            e.state
            for e in calc.process(window(strings("inv-01", [float(c) for c in cur]), k * 60_000))[1]
        ]
    # 7/8 -> 0.097 imbalance is below 80% of 0.2: clears on the second window.
    assert states == ["raised", "cleared"]


def test_other_window_sizes_are_ignored():
    calc = calculator(KpiOp(type="kpi", window_ms=900_000))
    assert calc.process(window({PV1: 1.0})) == ([], [])


def test_a_revised_window_counts_once_with_its_last_revision():
    calc = calculator(KpiOp(type="kpi"))
    calc.process(dataclasses.replace(window({BESS: -60.0}, 0), final_before_ms=60_000))  # 1 kWh in
    # Discharged 0.9 kWh, says the first emission; the window is not final yet.
    first = dataclasses.replace(window({BESS: 54.0}, 60_000), final_before_ms=60_000)
    assert calc.process(first) == ([], [])
    # A late point reopened the window: revision 1 says 0.6 kWh; now it is final.
    revised = dataclasses.replace(window({BESS: 36.0}, 60_000), revision=1, final_before_ms=120_000)
    (kpi,), _ = calc.process(revised)
    assert (kpi.name, kpi.value) == ("battery_round_trip_efficiency", pytest.approx(0.6, rel=1e-3))
    assert (kpi.details["charged_kwh"], kpi.details["discharged_kwh"]) == pytest.approx(
        (1.0, 0.6), rel=1e-3
    )
    # A revision after the window was settled (its source lagged past the aggregator's
    # max_source_lag_ms) is not counted again.
    again = dataclasses.replace(window({BESS: 30.0}, 60_000), revision=2, final_before_ms=120_000)
    assert calc.process(again) == ([], [])


@pytest.mark.parametrize(
    ("levels", "path"),
    [(2, SITE), (3, f"{SITE}/storage"), (4, f"{SITE}/storage/bess")],
)
def test_kpis_carry_the_path_of_their_shard(levels, path):
    calc = calculator(KpiOp(type="kpi"), levels=levels)
    calc.process(window({BESS: -60.0}, 0))
    kpis, _ = calc.process(window({BESS: 54.0}, 60_000))
    assert [(k.name, k.path) for k in kpis] == [("battery_round_trip_efficiency", path)]
