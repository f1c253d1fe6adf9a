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
        "state",
        "inference",
    ]
    assert all(m.path.is_file() for m in site.operators[6].models)
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


def test_a_rule_gated_on_the_sun_in_a_site_without_its_place_names_the_field():
    rule = {"id": "d", "kind": "drop", "tags": "soc", "lookback_ms": 60_000, "threshold": 0.2}
    data = with_(operators=[{"type": "anomaly", "rules": [{**rule, "sun_above_deg": 5}]}])
    with pytest.raises(ConfigError) as e:
        build_flow(parse_site(data))
    assert e.value.field == "operators.0"
    assert str(e.value).endswith(
        "rules.0.sun_above_deg: rule d gates on the sun, which needs the site's place "
        "(site.latitude and site.longitude)"
    )
    data["site"] = {**data["site"], "latitude": 47.6, "longitude": -52.7}
    build_flow(parse_site(data))


def test_env_values_are_expanded_after_parsing_and_never_reparsed(tmp_path: Path):
    site = tmp_path / "site.yaml"
    site.write_text(
        "# ${NOT_SET_ANYWHERE} in a comment is ignored\n"
        "name: ${SITE_NAME}\n"
        "site: {enterprise: acme, site: '${SITE_ID:-s1}'}\n"
        "inputs: [{type: simulator, seed: '${SEED}'}]\n"
        "sinks:\n"
        "  - type: mqtt-free-placeholder\n"
    )
    site.write_text(
        site.read_text().replace(
            "  - type: mqtt-free-placeholder\n",
            "  - type: timescaledb\n    dsn: \"host=h dbname=db user=u password='${PG_PASSWORD}'\"\n"
            "    schema: s_${SCHEMA_SUFFIX}\n",
        )
    )
    env = {
        "SITE_NAME": "yes",  # a YAML boolean if re-parsed
        "SEED": "0123",  # an octal-looking number if re-parsed
        "PG_PASSWORD": "pa ss #x",  # a comment if re-parsed
        "SCHEMA_SUFFIX": "a1",
    }
    loaded = load_site(site, env=env)
    assert loaded.name == "yes"
    assert loaded.site.site == "s1"
    assert loaded.inputs[0].seed == 123  # pydantic reads the string "0123" as the int 123
    assert loaded.sinks[0].dsn.get_secret_value() == "host=h dbname=db user=u password='pa ss #x'"
    assert loaded.sinks[0].db_schema == "s_a1"


def test_an_unset_variable_names_the_file_and_field(tmp_path: Path):
    site = tmp_path / "site.yaml"
    site.write_text(
        "name: n\nsite: {enterprise: acme, site: s1}\n"
        "inputs: [{type: simulator}]\nsinks: [{type: file, dir: '${OUT_DIR_NOT_SET}'}]\n"
    )
    with pytest.raises(ConfigError) as e:
        load_site(site, env={})
    assert str(e.value).startswith(f"{site}: sinks.0.dir: uses ${{OUT_DIR_NOT_SET}}")


def test_sink_subscriptions_are_checked_against_what_the_site_emits():
    data = with_(sinks=[{"type": "file", "streams": ["aggregates", "kpis"]}])
    with pytest.raises(ConfigError) as e:
        parse_site(data, source="site.yaml")
    text = str(e.value)
    assert "sinks.0.streams: file 'file' subscribes to 'aggregates'" in text
    assert "(emitted by: operator aggregate)" in text
    assert "subscribes to 'kpis'" in text and "operator inference, operator kpi" in text


def test_an_operator_needing_aggregates_must_follow_an_aggregate_operator():
    data = with_(operators=[{"type": "kpi"}, {"type": "aggregate"}])
    with pytest.raises(ConfigError, match=r"operators.0: kpi 'kpi' needs the 'aggregates' stream"):
        parse_site(data)


def test_kafka_input_partitions_come_from_the_site_file():
    data = with_(
        inputs=[{"type": "kafka", "kafka": {"bootstrap_servers": "h:1"}, "partitions": [0, 2]}]
    )
    assert parse_site(data).inputs[0].partitions == (0, 2)


def test_secrets_never_show_in_reprs_or_dumps():
    data = with_(
        inputs=[
            {"type": "mqtt", "host": "h", "topics": [{"template": "a/{tag}"}], "password": "pw1"},
            {"type": "kafka", "kafka": {"bootstrap_servers": "h:1", "sasl_password": "pw2"}},
            {
                "type": "opcua",
                "url": "opc.tcp://h:1",
                "nodes": [],
                "browse": ["i=85"],
                "username": "u",
                "password": "pw3",
            },
        ],
        sinks=[
            {"type": "timescaledb", "dsn": "postgresql://u:pw4@h/db"},
            {"type": "influxdb", "url": "http://h:1", "username": "u", "password": "pw5"},
            {
                "type": "influxdb",
                "id": "v2",
                "url": "http://h:1",
                "api": "v2",
                "org": "o",
                "bucket": "b",
                "token": "pw6",
            },
        ],
    )
    site = parse_site(data)
    text = repr(site) + str(site) + site.model_dump_json()
    for secret in ("pw1", "pw2", "pw3", "pw4", "pw5", "pw6"):
        assert secret not in text


def test_secrets_in_librdkafka_config_are_refused():
    data = with_(
        inputs=[
            {
                "type": "kafka",
                "kafka": {"bootstrap_servers": "h:1", "config": {"sasl.password": "x"}},
            }
        ]
    )
    with pytest.raises(ConfigError, match=r"put sasl\.password in sasl_password"):
        parse_site(data)


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://u:pa ss@h/db",
        "postgresql://u:s3cret@[::1",
        "host=h password=s3cret bad",
        "postgresql://u:s3cret@h/db?bogus=1",
    ],
)
def test_an_unparseable_dsn_is_reported_without_its_password(dsn):
    data = with_(sinks=[{"type": "timescaledb", "dsn": dsn}])
    with pytest.raises(ConfigError) as e:
        parse_site(data)
    assert "sinks.0.timescaledb.dsn: Value error, not a PostgreSQL connection string" in str(
        e.value
    )
    assert "s3cret" not in str(e.value) and "pa ss" not in str(e.value)


MODBUS = {
    "type": "modbus",
    "host": "127.0.0.1",
    "devices": [
        {
            "device_id": 1,
            "area": "pv",
            "line": "a1",
            "machine": "inv1",
            "interval_ms": 5000,
            "registers": [{"tag": "ac_power", "address": 0, "unit": "kW"}],
        }
    ],
}
OPCUA = {
    "type": "opcua",
    "url": "opc.tcp://127.0.0.1:4840",
    "mode": "polling",
    "interval_ms": 2000,
    "nodes": [
        {
            "node_id": "ns=2;i=2",
            "area": "pv",
            "line": "a1",
            "machine": "inv1",
            "tag": "ac_power",
            "unit": "kW",
        }
    ],
}
RATE = {"id": "ramp", "kind": "rate", "tags": "*/pv/*/ac_power", "threshold": 5}


@pytest.mark.parametrize(
    ("inp", "rule", "message"),
    [
        (
            MODBUS,
            {**RATE, "lookback_ms": 4000},
            "rules.0.lookback_ms: a lookback of 4000 ms never holds two samples of a tag "
            "sampled every 5000 ms, so rule ramp (rate) can never fire; make it at least 5000 "
            "ms (input modbus: acme/s1/pv/a1/inv1/ac_power)",
        ),
        (
            OPCUA,
            {**RATE, "kind": "gap", "lookback_ms": 1500},
            "rules.0.lookback_ms: a tag sampled every 2000 ms is missing for 2000 ms between "
            "any two samples, longer than the lookback of 1500 ms, so rule ramp (gap) would "
            "fire at every sample; make it at least 2000 ms "
            "(input opcua: acme/s1/pv/a1/inv1/ac_power)",
        ),
        (
            {"type": "simulator", "interval_ms": 10_000},
            {**RATE, "kind": "outlier", "lookback_ms": 30_000, "threshold": 3},
            "rules.0.lookback_ms: a lookback of 30000 ms holds 2 earlier samples",
        ),
        (
            {"type": "simulator"},
            {
                "id": "flat-sunny",
                "kind": "flatline",
                "tags": "*/pv/*/ac_power",
                "lookback_ms": 60_000,
                "when": {"tag": "*/irradiance", "above": 50, "max_age_ms": 500},
            },
            "rules.0.when.max_age_ms: a gate tag sampled every 1000 ms is older than "
            "max_age_ms (500)",
        ),
    ],
)
def test_a_rule_that_cannot_work_at_an_inputs_sampling_interval_names_the_field(inp, rule, message):
    data = with_(inputs=[inp], operators=[{"type": "anomaly", "rules": [rule]}])
    with pytest.raises(ConfigError) as e:
        build_flow(parse_site(data))
    assert e.value.field == "operators.0"
    assert message in str(e.value)
    # Long enough, or on an input that reports changes (no fixed interval): it builds.
    fixed = {**rule, "lookback_ms": 60_000}
    if "when" in rule:
        fixed["when"] = {**rule["when"], "max_age_ms": 60_000}
    build_flow(parse_site(with_(inputs=[inp], operators=[{"type": "anomaly", "rules": [fixed]}])))
    changes = {**OPCUA, "mode": "subscription"}
    build_flow(
        parse_site(with_(inputs=[changes], operators=[{"type": "anomaly", "rules": [rule]}]))
    )
