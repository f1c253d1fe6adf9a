import pytest
from asyncua import ua

from connectors.opcua.source import NodeMap, _Partition, quality_of


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


def test_scale_offset_and_timestamps():
    from datetime import UTC, datetime

    dv = ua.DataValue(
        ua.Variant(650, ua.VariantType.Int16), SourceTimestamp=datetime(2026, 1, 1, tzinfo=UTC)
    )
    n = NodeMap("ns=2;s=t", "e/s/a/l/m/t", "C", scale=0.1, offset=-40)
    path, unit, ts, value, q = _Partition._sample(None, n, dv)  # type: ignore[arg-type]
    assert (path, unit, ts, q) == ("e/s/a/l/m/t", "C", 1767225600000, 0)
    assert value == pytest.approx(25.0)
    text = ua.DataValue(ua.Variant("RUN", ua.VariantType.String))
    assert _Partition._sample(None, n, text) is None  # type: ignore[arg-type]
