"""The processing flow: ``python -m bytewax.run flows.process``.

Reads the raw topic that edge flows write and runs the operator chain of ``EDGEFLOW_SITE``
(default: ``flows/sites/process.yaml``: Kafka in; aggregates, events and KPIs to Kafka and
TimescaleDB). Several edge flows can feed one processor; the raw topic's partitions (keyed by
shard) let several processor workers or processes share the load.
"""

from __future__ import annotations

from pathlib import Path

from flows.entry import main_flow

__all__ = ["PROCESS_SITE", "flow"]

PROCESS_SITE = Path(__file__).parent / "sites" / "process.yaml"

flow = main_flow("process", PROCESS_SITE)
