from pathlib import Path

import pytest

from flows.build import build_flow
from flows.config import DEMO_SITE, load_site, parse_site
from flows.errors import ConfigError

MINIMAL = {
    "name": "t",
    "site": {"enterprise": "acme", "site": "s1"},
    "inputs": [{"type": "simulator"}],
    "sinks": [{"type": "console"}],
}


def with_(**changes):
    d = {**MINIMAL}
    d.update(changes)
    return d


def test_demo_site_loads_and_builds():
    site = load_site(DEMO_SITE)
    assert site.name == "demo"
    assert [o.type for o in site.operators] == [
        "validate",
        "aggregate",
        "anomaly",
        "alarm",
        "kpi",
        "inference",
    ]
    assert all(m.path.is_file() for m in site.operators[5].models)
    build_flow(site)


def test_minimal_config_defaults():
    site = parse_site(MINIMAL)
    assert site.inputs[0].interval_ms == 1000 and site.operators == ()


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (with_(site={"enterprise": "acme"}), "site.site"),
        (with_(site={"enterprise": "a/b", "site": "s"}), "site.enterprise"),
        (with_(inputs=[]), "inputs"),
        (with_(inputs=[{"type": "carrier-pigeon"}]), "inputs.0"),
        (with_(inputs=[{"type": "simulator", "interval_ms": 0}]), "inputs.0.simulator.interval_ms"),
        (
            with_(inputs=[{"type": "simulator", "start": "2026-01-01T00:00:00"}]),
            "inputs.0.simulator.start",
        ),
        (
            with_(operators=[{"type": "aggregate", "window_ms": 60000, "rollup_ms": [90000]}]),
            "operators.0.aggregate",
        ),
        (
            with_(operators=[{"type": "validate", "ranges": [{"tags": "x", "min": 5, "max": 1}]}]),
            "operators.0.validate.ranges.0",
        ),
        (with_(operators=[{"type": "validate", "bogus": 1}]), "operators.0.validate.bogus"),
        (with_(operators=[{"type": "validate"}, {"type": "validate"}]), "operators"),
        (with_(sinks=[{"type": "file", "streams": ["nope"]}]), "sinks.0.file.streams.0"),
    ],
)
def test_errors_name_the_bad_field(data, field):
    with pytest.raises(ConfigError) as e:
        parse_site(data, source="site.yaml")
    assert "invalid site config site.yaml" in str(e.value)
    assert f"  {field}" in str(e.value)


def test_load_site_reports_yaml_and_io_errors(tmp_path: Path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_site(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_site(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_site(scalar)


def test_custom_operator_must_be_loadable():
    data = with_(operators=[{"type": "custom", "id": "x", "callable": "nowhere.mod:fn"}])
    with pytest.raises(ConfigError, match="cannot be loaded"):
        build_flow(parse_site(data))


def test_unknown_unit_conversion_needs_a_factor():
    data = with_(
        operators=[{"type": "validate", "conversions": [{"from_unit": "bar", "to_unit": "psi"}]}]
    )
    with pytest.raises(ConfigError, match="bar -> psi"):
        build_flow(parse_site(data))
