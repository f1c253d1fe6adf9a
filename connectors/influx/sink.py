"""The InfluxDB sink: rows spooled, then written by a thread (:mod:`connectors._spooled`).

The flow never waits for InfluxDB: an outage (unreachable, 5xx, 429, refused credentials)
keeps the rows spooled and the writer retries; lines InfluxDB rejects (400, e.g. a field type
conflict) are narrowed down by bisection and become dead letters with InfluxDB's reason.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from typing_extensions import override

from connectors._spool import Spool
from connectors._spooled import Outage, Report, Spooled, SpoolSettings, Writer
from connectors.errors import SinkError
from connectors.influx.config import InfluxSinkConfig
from connectors.influx.writer import InfluxWriter

__all__ = ["InfluxDelivery", "spooled"]


class InfluxDelivery(Writer):
    """Writes spooled rows as line protocol; refused lines are reported as dead letters."""

    def __init__(
        self, cfg: InfluxSinkConfig, spool: Spool, report: Callable[[Report], None], path: str
    ) -> None:
        super().__init__(spool, report, name=cfg.id, endpoint=cfg.url, path=path)
        self.client = InfluxWriter(cfg)

    @override
    def deliver(self, rows: list[tuple[str, dict[str, Any]]]) -> None:
        try:
            dead = self.client.write(rows)
        except SinkError as e:
            raise Outage(str(e)) from e
        for d in dead:
            self.report(d)


def spooled(
    cfg: InfluxSinkConfig, spool_dir: Path, path: str = "", resume: dict[str, int] | None = None
) -> Spooled:
    """Build the spooled sink step's logic (the plugin does this per run; tools and benches too)."""

    def make(spool: Spool, report: Callable[[Report], None]) -> Writer:
        return InfluxDelivery(cfg, spool, report, path)

    return Spooled(SpoolSettings.of(cfg, spool_dir, path), make, resume)
