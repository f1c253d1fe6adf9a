"""Events: anomalies, alarms, stale tags, KPI breaches and model scores."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from operators.record import ms_to_iso

__all__ = ["Event"]


@dataclass(frozen=True, slots=True)
class Event:
    """Something a rule noticed about a tag at a time.

    ``kind`` is ``anomaly``, ``alarm``, ``stale``, ``kpi`` or ``score``; ``rule`` is the id of
    the rule that fired; ``state`` is ``raised``/``cleared`` for stateful alarms. The natural
    key is ``(kind, rule, path, ts_ms)``.
    """

    kind: str
    rule: str
    path: str
    ts_ms: int
    severity: str = "info"
    state: str = ""
    message: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-friendly dict."""
        return {
            "ts": ms_to_iso(self.ts_ms),
            "ts_ms": self.ts_ms,
            "kind": self.kind,
            "rule": self.rule,
            "path": self.path,
            "severity": self.severity,
            "state": self.state,
            "message": self.message,
            "details": self.details,
        }
