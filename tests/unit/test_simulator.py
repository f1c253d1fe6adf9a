import numpy as np
import pytest

from simulators.site import EnergySite, Fault
from wire.records import Quality

START = 1767268800000  # 2026-01-01T12:00Z, midday: the sun is up


def site(**kw):
    return EnergySite(start_ms=START, **kw)


def series(s, ticks, tag):
    b = s.step(ticks)
    i = [t.tag for t in b.tags].index(tag)
    paths = [t.path for t in b.tags]
    machine = {
        "soc": "bess-01",
        "voltage": "meter-01",
        "temperature": "inv-01",
        "active_power": "panel-01",
    }.get(tag)
    if machine:
        i = next(k for k, p in enumerate(paths) if f"/{machine}/" in p and p.endswith("/" + tag))
    return b.ts_ms[b.tag_idx == i], b.value[b.tag_idx == i], b.quality[b.tag_idx == i]


def test_deterministic_for_a_seed():
    a, b = site(seed=3).step(50), site(seed=3).step(50)
    assert np.array_equal(a.value, b.value) and np.array_equal(a.ts_ms, b.ts_ms)
    assert not np.array_equal(a.value, site(seed=4).step(50).value)


def test_one_sample_per_tag_per_tick():
    s = site(interval_ms=500)
    b = s.step(10)
    assert len(b) == 10 * len(s.tags)
    assert sorted(set(b.ts_ms.tolist())) == [START + 500 * k for k in range(10)]
    assert s.now_ms == START + 5000


def test_energy_balance_closes():
    s = site()
    b = s.step(1)
    v = {t.path.split("/", 2)[2]: b.value[i] for i, t in enumerate(b.tags)}
    pv = v["pv/array-1/inv-01/ac_power"] + v["pv/array-2/inv-02/ac_power"]
    load = v["load/lv-panel/panel-01/active_power"]
    bess = v["storage/bess/bess-01/power"]
    assert v["grid/poc/meter-01/active_power"] == pytest.approx(load - pv - bess, abs=0.5)
    assert 0 < pv < 200 and 0 <= v["storage/bess/bess-01/soc"] <= 100


@pytest.mark.parametrize(
    ("kind", "asset", "tag", "check"),
    [
        ("over_temp", "inv-01", "temperature", lambda base, f: f.max() > base.max() + 25),
        ("soc_drop", "bess-01", "soc", lambda base, f: f[-1] < base[-1] - 20),
        ("voltage_sag", "meter-01", "voltage", lambda base, f: f.mean() < 0.9 * base.mean()),
        ("power_spike", "panel-01", "active_power", lambda base, f: f.mean() > 2 * base.mean()),
    ],
)
def test_faults_change_the_signal(kind, asset, tag, check):
    fault = Fault(kind, asset, start_s=0, duration_s=300)
    _, base, _ = series(site(), 240, tag)
    _, faulty, _ = series(site(faults=(fault,)), 240, tag)
    assert check(base, faulty)


def test_bad_quality_fault_marks_points():
    _, _, q = series(site(faults=(Fault("bad_quality", "bess-01", 10, 5),)), 20, "soc")
    assert q.tolist() == [0] * 10 + [int(Quality.BAD)] * 5 + [0] * 5


def test_unknown_fault_asset_is_refused():
    with pytest.raises(ValueError, match="unknown assets"):
        site(faults=(Fault("over_temp", "inv-99", 0, 1),))
