"""The edge flow: ``python -m bytewax.run flows.edge``.

Runs the site named by ``EDGEFLOW_SITE`` (default: the embedded demo site, which needs no
services: built-in simulator in, console and ``out/*.jsonl`` out).
"""

from __future__ import annotations

from flows.config import DEMO_SITE
from flows.entry import main_flow

__all__ = ["flow"]

flow = main_flow("edge", DEMO_SITE)
