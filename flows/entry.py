"""Shared entry-point code for ``flows.edge`` and ``flows.process``."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from bytewax.dataflow import Dataflow

from connectors.lifecycle import install_sigint_handler
from flows.build import build_flow
from flows.config import EdgeflowSettings, load_site
from flows.errors import ConfigError

__all__ = ["main_flow"]


def main_flow(name: str, default_site: Path) -> Dataflow:
    """Load ``EDGEFLOW_SITE`` (or ``default_site``) and build its flow; exit 2 on bad config."""
    settings = EdgeflowSettings()
    site_path = settings.site if "site" in settings.model_fields_set else default_site
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        site = load_site(site_path)
        logging.getLogger("edgeflow").info("loaded site %s from %s", site.name, site_path)
        flow = build_flow(site, out_dir=settings.out_dir, name=name)
    except ConfigError as e:
        # A config error is the user's to fix: show it plainly, not as a traceback.
        print(f"edgeflow: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    install_sigint_handler()
    return flow
