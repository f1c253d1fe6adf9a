"""Exact percentiles per tag and window (p50, p95, p99), for the base window and rollups."""
