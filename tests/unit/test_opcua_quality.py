import pytest
from asyncua import ua

from connectors.opcua.config import PathPattern
from connectors.opcua.source import quality_of, sanitize, stamp


@pytest.mark.parametrize(
    ("code", "quality"),
    [
        (ua.StatusCodes.Good, 0),
        (ua.StatusCodes.UncertainLastUsableValue, 1),
        (ua.StatusCodes.UncertainSensorNotAccurate, 1),
        (ua.StatusCodes.BadSensorFailure, 2),
        (ua.StatusCodes.BadCommunicationError, 2),
    ],
)
def test_status_codes_map_to_quality(code, quality):
    assert quality_of(ua.StatusCode(code)) == quality
    assert quality_of(None) == 0


SESSION, RECV = 1_000_000, 1_000_500
DAY = 86_400_000


@pytest.mark.parametrize(
    ("policy", "src", "server", "first", "polled", "last", "want"),
    [
        pytest.param(
            "source", RECV - 10, RECV, False, False, None, (RECV - 10, RECV - 10), id="source"
        ),
        pytest.param(
            "source", None, RECV - 5, False, False, None, (RECV - 5, RECV - 5), id="no-src"
        ),
        pytest.param("source", None, None, False, False, None, (RECV, None), id="none"),
        pytest.param(
            "server", RECV - 10, RECV - 5, False, False, None, (RECV - 5, None), id="server"
        ),
        pytest.param(
            "receive", RECV - 10, RECV - 5, False, False, None, (RECV, None), id="receive"
        ),
        # A static value set 8 days before we subscribed: its current value, stamped now.
        pytest.param(
            "source",
            SESSION - 8 * DAY,
            RECV,
            True,
            False,
            None,
            (RECV, SESSION - 8 * DAY),
            id="static-first",
        ),
        # A value that changed after we subscribed keeps the device's time.
        pytest.param(
            "source",
            SESSION + 10,
            RECV,
            True,
            False,
            None,
            (SESSION + 10, SESSION + 10),
            id="fresh-first",
        ),
        # Polling an unchanged value: a sample at the poll's time, never a duplicate.
        pytest.param(
            "source",
            SESSION - 8 * DAY,
            RECV,
            False,
            True,
            SESSION - 8 * DAY,
            (RECV, SESSION - 8 * DAY),
            id="poll-unchanged",
        ),
        pytest.param(
            "source",
            RECV - 3,
            RECV,
            False,
            True,
            RECV - 900,
            (RECV - 3, RECV - 3),
            id="poll-changed",
        ),
    ],
)
def test_timestamp_policy(policy, src, server, first, polled, last, want):
    got = stamp(
        policy,
        source_ms=src,
        server_ms=server,
        received_ms=RECV,
        session_ms=SESSION,
        first=first,
        polled=polled,
        last_source_ms=last,
    )
    assert got == want


@pytest.mark.parametrize(
    ("raw", "clean"),
    [("Flow/Rate", "Flow_Rate"), ("  Pump 7 ", "Pump_7"), ("a / b", "a_b"), ("/", ""), ("", "")],
)
def test_browse_names_are_sanitised(raw, clean):
    assert sanitize(raw) == clean


@pytest.mark.parametrize(
    ("pattern", "path", "want"),
    [
        (
            "{area}/{line}/{machine}/{tag}",
            "A/L/M/t",
            {"area": "A", "line": "L", "machine": "M", "tag": "t"},
        ),
        ("{area}/{line}/{machine}/{tag}", "A/L/t", None),
        ("{machine}/{tag+}", "Robot/Axis/Torque", {"machine": "Robot", "tag": "Axis.Torque"}),
        ("{tag+}", "Speed", {"tag": "Speed"}),
        (
            "Plant/{area}/**/{machine}/{tag}",
            "Plant/A/x/y/M/t",
            {"area": "A", "machine": "M", "tag": "t"},
        ),
        (
            "Plant/{area}/**/{machine}/{tag}",
            "Plant/A/M/t",
            {"area": "A", "machine": "M", "tag": "t"},
        ),
        ("Plant/*/{machine}/{tag}", "Plant/A/M/t", {"machine": "M", "tag": "t"}),
        ("Plant/*/{machine}/{tag}", "Other/A/M/t", None),
    ],
)
def test_path_patterns(pattern, path, want):
    assert PathPattern(pattern).match(path.split("/")) == want


@pytest.mark.parametrize("bad", ["{area}/{colour}/{tag}", "{area}/{machine}", "a{b}/{tag}"])
def test_bad_patterns_are_config_errors(bad):
    with pytest.raises(ValueError, match="browse pattern"):
        PathPattern(bad)
