import numpy as np

from wire.points import PointsDecoder, decode_points, encode_points
from wire.records import PointBatch, TagRef

TAGS = (TagRef("e/s/a/l/m/p", "kW"), TagRef("e/s/a/l/m/t", "°C"))


def test_batch_decoder_equals_one_message_at_a_time():
    batch = PointBatch(
        TAGS,
        [0, 1, 0, 1, 0],
        [1, 2, 3, 4, 5],
        [1.5, -2.0, np.nan, 4.0, 5.5],
        [0, 1, 2, 0, 0],
    )
    binary = encode_points(batch)
    as_json = encode_points(batch, "json")
    keys = [k.encode() for k, _, _ in binary + as_json] + [b"e/s/a/l/m/x", None]
    values = [v for _, v, _ in binary + as_json] + [b"EFP1garbage", b"{}"]
    d = PointsDecoder().decode(keys, values)
    assert [i for i, _ in d.errors] == [4, 5]
    assert d.message == [0, 1, 2, 3]
    offset = 0
    for j, i in enumerate(d.message):
        path, unit, ts, val, q = decode_points(keys[i], values[i])
        n = int(d.counts[j])
        assert d.refs[j] == TagRef(path, unit)
        assert d.ts_ms[offset : offset + n].tolist() == ts.tolist()
        np.testing.assert_array_equal(d.value[offset : offset + n], val)
        assert d.quality[offset : offset + n].tolist() == q.tolist()
        offset += n
    assert offset == len(d.ts_ms) == 10
