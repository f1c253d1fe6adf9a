"""Registers the anomaly operator: rules over a per-tag lookback window."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from flows.build import Build
from flows.registry import OperatorModel, register
from operators.anomaly.flow import anomalies
from operators.anomaly.logic import AnomalyRule
from operators.errors import RuleError
from wire.records import TagRef, tag_matches

__all__ = ["AnomalyOp", "build"]


class AnomalyOp(OperatorModel):
    """Anomaly windows over points (drop, spike, deviation, rate, flatline, clipping, outlier, gap).

    Any rule may be gated on the sun's elevation at the site.
    """

    type: Literal["anomaly"]
    id: str = "anomaly"
    rules: tuple[AnomalyRule, ...] = Field(min_length=1)


@register(
    "operator", "anomaly", AnomalyOp, emits=("events",), needs=("points",), sample="sample.yaml"
)
def build(cfg: AnomalyOp, b: Build) -> None:
    """Add raised/cleared anomaly events to ``events``."""
    _check_sampling(cfg.rules, b)
    b.add("events", anomalies(cfg.id, b.points, cfg.rules, location=b.site.site.place))


def _check_sampling(rules: tuple[AnomalyRule, ...], b: Build) -> None:
    """Refuse rules that can never work on the tags the site's inputs sample at fixed intervals."""
    ident = b.site.site
    sampled: dict[str, tuple[str, int]] = {}  # path -> (input id, interval)
    for inp in getattr(b.site, "inputs", ()):
        for ref, interval in inp.sampled_tags(ident.enterprise, ident.site).items():
            sampled.setdefault(ref.path, (inp.id, interval))
    refs = [TagRef(p) for p in sampled]
    for i, rule in enumerate(rules):
        checks = [(f"rules.{i}.lookback_ms", rule.tags, rule.sampling_problem)]
        if rule.when is not None:
            checks.append((f"rules.{i}.when.max_age_ms", rule.when.tag, rule.when.sampling_problem))
        for field_, pattern, problem in checks:
            for ref in refs:
                if not tag_matches(pattern, ref):
                    continue
                inp_id, interval = sampled[ref.path]
                why = problem(interval)
                if why is not None:
                    msg = f"{field_}: {why} (input {inp_id}: {ref.path})"
                    raise RuleError(msg)
