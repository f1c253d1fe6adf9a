"""MQTT output topics (the publishing itself is tested against mosquitto)."""

from __future__ import annotations

import pytest

from connectors.mqtt.output import MqttSinkConfig, topic_for

T = "{enterprise}/{site}/{area}/{line}/{machine}/_edgeflow/{stream}/{tag}"


@pytest.mark.parametrize(
    ("stream", "row", "topic"),
    [
        (
            "aggregates",
            {"path": "acme/s1/pv/a1/inv-01/ac_power"},
            "acme/s1/pv/a1/inv-01/_edgeflow/aggregates/ac_power",
        ),
        # A site KPI: levels below the site are _, the tag is the KPI's name.
        (
            "kpis",
            {"path": "acme/s1", "name": "performance_ratio"},
            "acme/s1/_/_/_/_edgeflow/kpis/performance_ratio",
        ),
        # An event on a machine (no tag): the rule names it.
        (
            "events",
            {"path": "acme/s1/pv/a1/inv-01", "rule": "fault_probability"},
            "acme/s1/pv/a1/inv-01/_edgeflow/events/fault_probability",
        ),
        # Wildcards and separators from data never reach a topic level.
        (
            "events",
            {"path": "acme/s1/pv/a1/inv-01", "rule": "a+b#c"},
            "acme/s1/pv/a1/inv-01/_edgeflow/events/a_b_c",
        ),
    ],
)
def test_topics_follow_the_rows_isa95_context(stream, row, topic):
    assert topic_for(T, stream, row) == topic


@pytest.mark.parametrize("topic", ["{site}/{oops}/{tag}", "plant/+/{tag}", "plant/{site}"])
def test_a_topic_template_must_name_the_tag_and_known_levels_only(topic):
    with pytest.raises(ValueError, match="must contain"):
        MqttSinkConfig(type="mqtt", host="127.0.0.1", topic=topic)
