import logging

from bytewax.testing import run_main

from flows.build import build_flow
from flows.config import parse_site


def test_dead_letters_without_a_sink_are_logged_not_dropped_silently(caplog):
    cfg = {
        "name": "t",
        "site": {"enterprise": "e", "site": "s"},
        "inputs": [
            {"type": "simulator", "duration_s": 30, "speed": 0, "start": "2026-06-01T10:00:00Z"}
        ],
        "operators": [{"type": "validate", "ranges": [{"tags": "soc", "min": 0, "max": 1}]}],
        "sinks": [{"type": "console", "streams": ["events"]}],
    }
    with caplog.at_level(logging.WARNING, logger="edgeflow.unrouted"):
        run_main(build_flow(parse_site(cfg)))
    lines = [r.getMessage() for r in caplog.records if r.name == "edgeflow.unrouted"]
    assert lines and all("no sink subscribes to 'dead_letters'" in m for m in lines)
    assert "out-of-range" in lines[0]
