"""The edge flow: ``python -m bytewax.run flows.edge``.

Runs the site named by ``EDGEFLOW_SITE`` (default: the embedded demo site, which needs no
services: built-in simulator in, console and ``out/*.jsonl`` out).
"""

from __future__ import annotations

import logging
import sys

from bytewax.dataflow import Dataflow

from connectors.lifecycle import install_sigint_handler
from flows.build import build_flow
from flows.config import EdgeflowSettings, load_site
from flows.errors import ConfigError

__all__ = ["flow", "make_flow"]


def make_flow(settings: EdgeflowSettings | None = None) -> Dataflow:
    """Load the configured site and build its dataflow."""
    settings = settings or EdgeflowSettings()
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    site = load_site(settings.site)
    logging.getLogger("edgeflow").info("loaded site %s from %s", site.name, settings.site)
    return build_flow(site, out_dir=settings.out_dir)


try:
    flow = make_flow()
    install_sigint_handler()
except ConfigError as e:
    # A config error is the user's to fix: show it plainly, not as a traceback.
    print(f"edgeflow: {e}", file=sys.stderr)
    raise SystemExit(2) from None
