"""Registers the inference operator: ONNX models on per-asset features of closed windows."""

from __future__ import annotations

from functools import partial
from typing import Literal

from pydantic import Field, model_validator

from flows.build import Build
from flows.registry import OperatorModel, register
from operators._flow import score_windows
from operators.inference.logic import FeatureSpec, ModelSpec, OnnxScorer, check_feature_specs

__all__ = ["InferenceOp", "build"]


class InferenceOp(OperatorModel):
    """ONNX inference on per-asset features of closed windows."""

    type: Literal["inference"]
    id: str = "inference"
    window_ms: int = Field(default=60_000, gt=0)
    assets: str = Field(description="glob over machine paths, e.g. */pv/*/inv-*")
    features: tuple[FeatureSpec, ...] = Field(min_length=1)
    models: tuple[ModelSpec, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _features(self) -> InferenceOp:
        check_feature_specs(self.features)
        return self


@register(
    "operator",
    "inference",
    InferenceOp,
    emits=("kpis", "events"),
    needs=("aggregates",),
    sample="sample.yaml",
)
def build(cfg: InferenceOp, b: Build) -> None:
    """Add model scores to ``kpis`` and threshold crossings to ``events``."""
    factory = partial(OnnxScorer, cfg.window_ms, cfg.assets, cfg.features, cfg.models)
    factory()  # fail now: missing model files, feature count mismatch, unknown outputs
    scored = score_windows(cfg.id, b.stream("aggregates", cfg.id), factory, levels=b.shard_levels)
    b.add("kpis", scored.kpis)
    b.add("events", scored.events)
