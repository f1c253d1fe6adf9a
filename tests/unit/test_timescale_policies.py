"""TimescaleDB settings: intervals, per-table defaults, the policy plan, error classes."""

from __future__ import annotations

from datetime import timedelta

import psycopg
import pytest

from connectors.timescale.config import TimescaleSinkConfig
from connectors.timescale.policies import Current, Policy, interval_ms, plan
from connectors.timescale.schema import tag_row
from connectors.timescale.sink import is_outage
from flows.build import build_flow
from flows.config import parse_site
from flows.errors import ConfigError

DAY = timedelta(days=1)


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("7 days", 7 * 86_400_000),
        ("1 day", 86_400_000),
        ("2 weeks", 1_209_600_000),
        ("90 min", 5_400_000),
        ("12 hours", 43_200_000),
        ("500 ms", 500),
        ("30s", 30_000),
    ],
)
def test_intervals(text, ms):
    assert interval_ms(text) == ms


@pytest.mark.parametrize("text", ["1 month", "a week", "7", "-1 day", "1 year"])
def test_intervals_without_a_fixed_length_are_refused(text):
    with pytest.raises(ValueError, match="is not an interval such as '7 days'"):
        interval_ms(text)


def _cfg(**kw):
    return TimescaleSinkConfig.model_validate(
        {"type": "timescaledb", "dsn": "postgresql://u@127.0.0.1/db", **kw}
    )


def test_each_table_has_defaults_of_its_own_and_may_override_the_sinks():
    cfg = _cfg(
        compress_after="2 days",
        retain_for="90 days",
        tables={"events": {"compress_after": None, "chunk_interval": "90 days"}},
    )
    points, events = cfg.table("points"), cfg.table("events")
    assert (points.chunk_interval, points.segmentby, points.orderby) == (
        "1 day",
        ("path",),
        "ts desc",
    )
    assert (points.compress_after, points.retain_for) == ("2 days", "90 days")
    assert (events.chunk_interval, events.compress_after, events.retain_for) == (
        "90 days",
        None,
        "90 days",
    )
    assert cfg.table("aggregates").segmentby == ("path", "window_ms")
    assert cfg.table("kpis").segmentby == ("path", "name")


def test_policies_follow_the_config():
    have = [
        Current("points", "compression", 1001, 7 * DAY),
        Current("points", "retention", 1002, 90 * DAY),
        Current("events", "compression", 1003, 7 * DAY),
        Current("kpis", "retention", 1004, 30 * DAY),
    ]
    want = [
        Policy("points", "2 days", "90 days"),  # compression altered, retention unchanged
        Policy("events", None, None),  # compression removed
        Policy("kpis", "7 days", "30 days"),  # compression added, retention unchanged
    ]
    statements, changes = plan("ef", want, have)
    assert statements == [
        (
            "select alter_job(%s, config => jsonb_set(config, %s, to_jsonb(%s::interval::text)))",
            (1001, "{compress_after}", "2 days"),
        ),
        ("select remove_compression_policy(%s, if_exists => true)", ('"ef"."events"',)),
        (
            "select add_compression_policy(%s, %s::interval, if_not_exists => true)",
            ('"ef"."kpis"', "7 days"),
        ),
    ]
    assert changes == [
        "points: compression compress_after 1 weeks -> 2 days",
        "events: compression policy removed",
        "kpis: compression policy added (compress_after 7 days)",
    ]
    # Applied, the plan is empty: nothing changes at the next start.
    after = [
        Current("points", "compression", 1001, 2 * DAY),
        Current("points", "retention", 1002, 90 * DAY),
        Current("kpis", "compression", 1005, 7 * DAY),
        Current("kpis", "retention", 1004, 30 * DAY),
    ]
    assert plan("ef", want, after) == ([], [])


def test_a_retention_change_alters_drop_after():
    statements, changes = plan(
        "ef",
        [Policy("aggregates", None, "365 days")],
        [Current("aggregates", "retention", 7, 90 * DAY)],
    )
    assert statements[0][1] == (7, "{drop_after}", "365 days")
    assert changes == ["aggregates: retention drop_after 90 days -> 365 days"]


@pytest.mark.parametrize(
    ("path", "row"),
    [
        ("a/s/ar/l/m/t", ("a/s/ar/l/m/t", "a", "s", "ar", "l", "m", "t", "kW")),
        ("a/s", ("a/s", "a", "s", None, None, None, None, "kW")),  # a site KPI
        ("a/s/ar/l/m", ("a/s/ar/l/m", "a", "s", "ar", "l", "m", None, "kW")),  # an asset's
    ],
)
def test_tag_rows_carry_the_isa95_levels(path, row):
    assert tag_row(path, "kW") == row


@pytest.mark.parametrize(
    ("error", "outage"),
    [
        (psycopg.OperationalError("server closed the connection unexpectedly"), True),
        (psycopg.errors.AdminShutdown("terminating connection"), True),  # 57P01
        (psycopg.errors.QueryCanceled("statement timeout"), True),  # 57014
        (psycopg.errors.TooManyConnections("too many"), True),  # 53300
        (psycopg.errors.DeadlockDetected("deadlock"), True),  # 40P01
        (psycopg.errors.CheckViolation("check"), False),  # 23514
        (psycopg.errors.InvalidTextRepresentation("type"), False),  # 22P02
        (psycopg.errors.ConfigurationLimitExceeded("tuple decompression limit"), False),  # 53400
        # A full disk or memory passes with an operator's action, whatever the rows.
        (psycopg.errors.DiskFull("disk full"), True),  # 53100
        (psycopg.errors.OutOfMemory("out of memory"), True),  # 53200
        (psycopg.errors.StatementTooComplex("too complex"), False),  # 54001
    ],
)
def test_error_classes(error, outage):
    assert is_outage(error) is outage


def _site(compress_after, **agg):
    return {
        "name": "t",
        "site": {"enterprise": "acme", "site": "s1"},
        "inputs": [{"type": "simulator"}],
        "operators": [{"type": "aggregate", **agg}],
        "sinks": [
            {"type": "console"},
            {
                "type": "timescaledb",
                "dsn": "postgresql://u@127.0.0.1/db",
                "tables": {"aggregates": {"compress_after": compress_after}},
            },
        ],
    }


def test_compression_within_the_revision_horizon_is_a_config_error_naming_the_field():
    # 15-min rollups + 5 s lateness + 1 min gap + 5 min source lag: about 21 min.
    with pytest.raises(ConfigError) as e:
        build_flow(parse_site(_site("20 min")))
    assert e.value.field == "sinks.1"
    assert "tables.aggregates.compress_after: '20 min' must be longer than 21.0833 min" in str(
        e.value
    )
    build_flow(parse_site(_site("22 min")))
    with pytest.raises(ConfigError, match=r"must be longer than 1446\.08 min"):
        build_flow(parse_site(_site("1 day", rollup_ms=[900_000, 86_400_000])))
