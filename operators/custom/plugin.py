"""Registers the custom operator: any ``module:function`` applied to the flow being built.

The function is called as ``fn(step_id, b, **params)`` with the :class:`flows.build.Build`
context: it reads ``b.points`` (the keyed stream of point batches) or ``b.stream(name, ...)``
and contributes with ``b.add(name, stream)`` or by assigning ``b.points``. Operators meant to
be reused belong in a package that registers them under their own ``type`` (see the README).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, Literal

from pydantic import Field

from flows.build import Build
from flows.errors import ConfigError
from flows.registry import OperatorModel, register

__all__ = ["CustomOp", "build"]


class CustomOp(OperatorModel):
    """A user operator: ``callable`` is ``package.module:function``."""

    type: Literal["custom"]
    id: str = Field(min_length=1)
    callable: str = Field(pattern=r"^[\w.]+:[\w.]+$")
    params: dict[str, Any] = Field(default_factory=dict)
    emits: tuple[str, ...] = Field(
        default=("points",), description="streams the function contributes to"
    )


def _load_callable(path: str) -> Callable[..., Any]:
    module_name, _, attr = path.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        msg = f"callable {path!r} cannot be loaded: {e}"
        raise ConfigError(msg, field="callable") from e
    if not callable(obj):
        msg = f"{path!r} is not callable"
        raise ConfigError(msg, field="callable")
    return obj  # type: ignore[no-any-return]


@register(
    "operator",
    "custom",
    CustomOp,
    emits=lambda cfg: cfg.emits,
    needs=("points",),
    sample="sample.yaml",
)
def build(cfg: CustomOp, b: Build) -> None:
    """Call the user's function with the build context."""
    _load_callable(cfg.callable)(cfg.id, b, **cfg.params)
