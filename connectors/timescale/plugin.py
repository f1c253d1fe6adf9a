"""Registers the TimescaleDB / PostgreSQL sink."""

from __future__ import annotations

from functools import partial

from connectors._spool_options import spool_home
from connectors._spooled import spooled_output
from connectors.timescale.config import TimescaleSinkConfig
from connectors.timescale.policies import interval_ms
from flows.build import Build
from flows.registry import register

__all__ = ["build"]


@register(
    "sink",
    "timescaledb",
    TimescaleSinkConfig,
    emits=("dead_letters", "events"),
    sample="sample.yaml",
)
def build(cfg: TimescaleSinkConfig, b: Build) -> None:
    """Spool the subscribed streams' rows; a writer thread upserts them into their tables."""
    # psycopg only in flows with this sink (18 MB resident otherwise).
    from connectors.timescale.sink import spooled

    _check_compression(cfg, b.site.revision_horizon_ms())
    rows = b.tagged_rows(cfg.streams, cfg.id)
    if rows is None:
        return
    home, path = spool_home(b.site, cfg)
    spooled_output(b, cfg.id, rows, partial(spooled, cfg, home / cfg.db_schema, path))


def _check_compression(cfg: TimescaleSinkConfig, horizon_ms: int) -> None:
    """Refuse a compression age within the time the site's operators may still rewrite rows.

    A compressed chunk that is written again must be decompressed: a policy younger than the
    revision horizon would do that at every re-emitted window.
    """
    from connectors.timescale.schema import TABLES

    for name in TABLES:
        after = cfg.table(name).compress_after
        if after is None or interval_ms(after) > horizon_ms:
            continue
        own = cfg.tables.get(name)  # type: ignore[call-overload]
        where = (
            f"tables.{name}.compress_after"
            if own is not None and "compress_after" in own.model_fields_set
            else "compress_after"
        )
        msg = (
            f"{where}: {after!r} must be longer than {horizon_ms / 60_000:g} min, how long "
            "the site's operators may still rewrite a row (largest window + "
            "allowed_lateness_ms + max_gap_ms + max_source_lag_ms)"
        )
        raise ValueError(msg)
