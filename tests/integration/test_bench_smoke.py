"""The benchmark's chain computes the same aggregates as its numpy reference."""

from bench.cases import chain, numpy_only
from bench.data import BenchData


def test_bench_chain_matches_numpy_reference():
    data = BenchData(n_tags=200, rate_hz=2, duration_s=300)
    got, want = chain(data), numpy_only(data)
    assert got["checksum"] == want["checksum"]
    assert got["checksum"]["1m_rows"] > 0 and got["checksum"]["15m_rows"] > 0
    # 1% of points are invalid and 1% late: both are kept out of the aggregates.
    assert got["checksum"]["1m_count"] < 0.99 * data.total_points
