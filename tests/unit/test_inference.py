import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from operators._state import WindowSequencer
from operators.aggregate.logic import TumblingAggregator
from operators.errors import RuleError
from operators.inference.logic import (
    InferenceError,
    ModelSpec,
    OnnxScorer,
    assemble_features,
    load_feature_specs,
)
from wire.records import PointBatch, TagRef

MODELS = Path(__file__).resolve().parents[2] / "models"
META = json.loads((MODELS / "inverter_models.json").read_text())
SITE = "acme/s1"


def window(values, start_ms=0):
    tags = tuple(values)
    b = PointBatch(
        tags,
        list(range(len(tags))),
        [start_ms] * len(tags),
        [values[t] for t in tags],
        [0] * len(tags),
    )
    agg = TumblingAggregator(rollup_ms=(), idle_close=False)
    agg.add(b, 0)
    (w,) = agg.flush()
    return w


def inverter(n, *, ac=80.0, eff=97.0, temp=50.0, strings=(8.0, 8.0, 8.0, 8.0)):
    m = f"{SITE}/pv/array-{n}/inv-0{n}"
    vals = {
        TagRef(f"{m}/ac_power", "kW"): ac,
        TagRef(f"{m}/dc_power", "kW"): ac / eff * 100,
        TagRef(f"{m}/efficiency", "%"): eff,
        TagRef(f"{m}/temperature", "C"): temp,
    }
    vals.update({TagRef(f"{m}/string{i + 1}_current", "A"): c for i, c in enumerate(strings)})
    return vals


def site_window(start_ms=0, **inv2):
    return window(
        {
            TagRef(f"{SITE}/weather/met/met-01/irradiance", "W/m2"): 850.0,
            TagRef(f"{SITE}/weather/met/met-01/ambient_temperature", "C"): 24.0,
            **inverter(1),
            **inverter(2, **inv2),
        },
        start_ms,
    )


def scorer(**overrides):
    specs = load_feature_specs(META["features"])
    models = tuple(
        ModelSpec(
            m["name"],
            MODELS / m["file"],
            m["output"],
            m.get("column"),
            m.get("negate", False),
            m.get("threshold"),
        )
        for m in META["models"]
    )
    return OnnxScorer(
        **{
            "window_ms": 60_000,
            "assets": META["assets"],
            "features": specs,
            "models": models,
            **overrides,
        }
    )


def test_assemble_features_table():
    specs = load_feature_specs(META["features"])
    assets, X = assemble_features(
        site_window(strings=(8.0, 8.0, 8.0, 4.0), temp=60.0), "*/pv/*/inv-*", specs
    )
    assert assets == [f"{SITE}/pv/array-1/inv-01", f"{SITE}/pv/array-2/inv-02"]
    row = dict(zip([s.name for s in specs], X[1].tolist(), strict=True))
    assert row["ac_power_pu"] == pytest.approx(0.8)
    assert row["efficiency_pu"] == pytest.approx(0.97)
    assert row["temp_rise_c"] == pytest.approx(36.0)
    assert row["string_imbalance"] == pytest.approx(3 / 7, rel=1e-6)
    assert row["irradiance_kw_m2"] == pytest.approx(0.85)
    assert X[0, 5] == 0.0


def sequenced(**overrides):
    """The scorer as the flow runs it: scores at once, events on final windows in order."""
    return WindowSequencer(scorer(**overrides))


def test_missing_feature_tag_gives_nan_and_no_score():
    w = window({TagRef(f"{SITE}/pv/a1/inv-01/ac_power", "kW"): 1.0})
    _, X = assemble_features(w, "*/pv/*/inv-*", load_feature_specs(META["features"]))
    assert np.isnan(X).any()
    assert sequenced().process(w) == ([], [])


@pytest.mark.parametrize(
    ("inv2", "raised"),
    [
        ({}, []),
        ({"temp": 95.0}, ["inv-02"]),
        ({"eff": 77.0}, ["inv-02"]),
        ({"strings": (8.0, 8.0, 8.0, 4.0)}, ["inv-02"]),
    ],
)
def test_fault_probability_alerts(inv2, raised):
    kpis, events = sequenced().process(site_window(**inv2))
    assert {k.name for k in kpis} == {"fault_probability", "anomaly_score"}
    assert len(kpis) == 4  # two assets x two models, batched per window
    assert [e.path.rsplit("/", 1)[1] for e in events if e.state == "raised"] == raised


def test_scores_batch_in_one_call_per_model():
    s = sequenced()
    s.process(site_window())
    assert s.engine.calls == 2  # and the events reuse the scores


def test_alert_clears_once():
    s = sequenced()
    states = [
        e.state
        for w in (site_window(0, temp=95.0), site_window(60_000, temp=96.0), site_window(120_000))
        for e in s.process(w)[1]
    ]
    assert states == ["raised", "cleared"]


def test_feature_count_mismatch_is_a_clear_error():
    specs = load_feature_specs(META["features"])[:3]
    with pytest.raises(InferenceError, match="expects 7 features"):
        scorer(features=specs)


def test_missing_model_file_and_output():
    good = scorer().models[0]
    with pytest.raises(InferenceError, match="cannot load"):
        scorer(models=(replace(good, path=MODELS / "nope.onnx"),))
    with pytest.raises(InferenceError, match="no output"):
        scorer(models=(replace(good, output="nope"),))


def test_feature_minus_must_reference_an_earlier_feature():
    with pytest.raises(RuleError):
        load_feature_specs([{"name": "a", "tags": "x", "minus": "b"}, {"name": "b", "tags": "y"}])


def test_scorer_survives_snapshot_copy():
    import copy

    s = sequenced()
    s.process(site_window(temp=95.0))
    s2 = copy.deepcopy(s)
    assert [e.state for e in s2.process(site_window(60_000))[1]] == ["cleared"]


def test_events_follow_window_order_and_last_revisions_not_arrival():
    s = sequenced()
    hot = replace(site_window(60_000, temp=95.0), final_before_ms=0)  # not final yet
    cool = replace(site_window(0), final_before_ms=0)
    kpis, events = s.process(hot)
    assert kpis and not events  # scores at once, events wait for the window to be final
    assert s.process(cool)[1] == []
    # The hot window is revised (a lagging source): only its last revision counts.
    revised = replace(site_window(60_000), revision=1, final_before_ms=120_000)
    assert s.process(revised)[1] == []
    final = replace(site_window(120_000, temp=95.0), final_before_ms=180_000)
    assert [(e.state, e.ts_ms) for e in s.process(final)[1]] == [("raised", 180_000)]


def test_shipped_models_are_reproducible(tmp_path):
    pytest.importorskip("sklearn", reason="models extra not installed")
    from models.build import build

    meta = build(tmp_path)
    assert meta["sha256"] == META["sha256"]
    assert meta["features"] == META["features"]
