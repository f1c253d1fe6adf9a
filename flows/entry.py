"""Shared entry-point code for ``flows.edge`` and ``flows.process``."""

from __future__ import annotations

import atexit
import logging
import os
import sys
from pathlib import Path
from typing import Any

from bytewax.dataflow import Dataflow

from flows.build import build_flow
from flows.config import Observability, load_settings, load_site
from flows.errors import ConfigError
from flows.lifecycle import exit_failures, install_signal_handlers, run_option
from flows.metrics import StatusLogger, serve

__all__ = ["fail", "main_flow", "observe", "process_index", "setup_logging"]


def fail(e: ConfigError) -> None:
    """Print a configuration mistake as one ``edgeflow: ...`` message and exit 2."""
    print(f"edgeflow: {e}", file=sys.stderr)
    raise SystemExit(2) from None


def setup_logging(level: str, fmt: str = "text") -> None:
    """Configure the root logger once (text, or one JSON object per line)."""
    from flows.logs import configure

    configure(level=level, fmt=fmt)


def main_flow(name: str, default_site: Path) -> Dataflow:
    """Load ``EDGEFLOW_SITE`` (or ``default_site``) and build its flow; exit 2 on bad config."""
    try:
        settings = load_settings()
    except ConfigError as e:
        fail(e)
        raise  # unreachable: fail() exits
    site_path = settings.site if "site" in settings.model_fields_set else default_site
    setup_logging(settings.log_level, settings.log_format or "text")
    try:
        site: Any = load_site(site_path)
        if settings.log_format is None and site.observability.log_format != "text":
            setup_logging(settings.log_level, site.observability.log_format)
        logging.getLogger("edgeflow").info("loaded site %s from %s", site.name, site_path)
        flow = build_flow(site, out_dir=settings.out_dir, name=name)
    except ConfigError as e:
        fail(e)
        raise  # unreachable
    obs = site.observability
    if settings.metrics_listen is not None:
        listen = None if settings.metrics_listen == "off" else settings.metrics_listen
        obs = obs.model_copy(update={"listen": listen})
    observe(obs, source=site.source_file)
    install_signal_handlers()
    atexit.register(_exit_status)
    return flow


def process_index(argv: list[str] | None = None) -> int:
    """Return this process's index in a bytewax cluster (``-i``/``--process-id``), else 0."""
    value = run_option(("-i", "--process-id"), argv)
    return int(value if value is not None else os.environ.get("BYTEWAX_PROCESS_ID") or 0)


def observe(cfg: Observability, *, source: str | None = None) -> None:
    """Start the metrics and health endpoint and the status line, as the site file says."""
    if cfg.listen:
        try:
            serve(cfg.listen, process_index=process_index())
        except OSError as e:
            fail(ConfigError(str(e), file=source, field="observability.listen"))
    if cfg.status_interval_s > 0:
        StatusLogger(cfg.status_interval_s).start()


def _exit_status() -> None:
    # A run that could not deliver everything must not exit 0 (it kept the data: the
    # message says where).
    failures = exit_failures()
    if failures:
        for msg in failures:
            print(f"edgeflow: {msg}", file=sys.stderr)
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(3)
