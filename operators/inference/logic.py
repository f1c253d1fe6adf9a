"""ONNX inference on per-asset feature vectors assembled from closed window aggregates.

A :class:`FeatureSpec` says how to build one feature of an asset (a machine, e.g. an
inverter) from a window: which tags (relative to the asset, or site-wide), which statistic,
how to reduce several tags (mean, max, min, or ``imbalance`` = max |x - mean| / mean), an
optional divisor and an optional feature to subtract. The same code builds the training set
in ``models/build.py`` and the inputs at run time, so features cannot drift apart.

:class:`OnnxScorer` runs one ``onnxruntime`` session per model over all assets of a window
at once (batch inference; ~1 ms per call is paid once per window, not per asset).
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import AfterValidator, ConfigDict, ValidationInfo

from operators.errors import OperatorError, RuleError
from wire.records import Event, Kpi, TagRef, WindowAggregates

__all__ = [
    "FeatureSpec",
    "InferenceError",
    "ModelSpec",
    "OnnxScorer",
    "assemble_features",
    "check_feature_specs",
    "load_feature_specs",
    "read_model_metadata",
]

Stat = Literal["mean", "min", "max", "std", "twa", "first", "last", "sum"]


class InferenceError(OperatorError):
    """A model cannot be loaded or does not fit its feature list."""


@dataclass(frozen=True, slots=True)
class FeatureSpec:
    """One input feature; ``tags`` is a tag-name glob (``scope=asset``) or a path glob."""

    __pydantic_config__ = ConfigDict(extra="forbid")

    name: str
    tags: str
    stat: Stat = "mean"
    reduce: Literal["mean", "max", "min", "imbalance"] = "mean"
    scope: Literal["asset", "site"] = "asset"
    scale: float = 1.0
    minus: str | None = None


def check_feature_specs(specs: tuple[FeatureSpec, ...]) -> tuple[FeatureSpec, ...]:
    """Check that every ``minus`` names an earlier feature; return the specs."""
    names = [s.name for s in specs]
    for i, s in enumerate(specs):
        if s.minus is not None and s.minus not in names[:i]:
            msg = f"feature {s.name} subtracts {s.minus!r}, which is not an earlier feature"
            raise RuleError(msg)
    return specs


def load_feature_specs(items: list[dict[str, Any]]) -> tuple[FeatureSpec, ...]:
    """Parse feature specs from plain dicts (model metadata)."""
    try:
        specs = tuple(FeatureSpec(**i) for i in items)
    except TypeError as e:
        msg = f"bad feature spec: {e}"
        raise RuleError(msg) from e
    return check_feature_specs(specs)


def _reduce(values: npt.NDArray[np.float64], how: str) -> float:
    if not len(values):
        return float("nan")
    if how == "max":
        return float(values.max())
    if how == "min":
        return float(values.min())
    if how == "imbalance":
        mean = float(values.mean())
        return float(np.abs(values - mean).max() / mean) if mean > 0 else 0.0
    return float(values.mean())


def _tag_plan(
    t: TagRef, assets_glob: str, specs: tuple[FeatureSpec, ...]
) -> tuple[str | None, tuple[bool, ...]]:
    """Return (the tag's asset if it matches ``assets_glob``, which specs the tag feeds)."""
    machine = t.path.rsplit("/", 1)[0]
    asset = machine if fnmatch.fnmatchcase(machine, assets_glob) else None
    feeds = tuple(
        fnmatch.fnmatchcase(t.path if s.scope == "site" and "/" in s.tags else t.tag, s.tags)
        for s in specs
    )
    return asset, feeds


def assemble_features(
    w: WindowAggregates,
    assets_glob: str,
    specs: tuple[FeatureSpec, ...],
    cache: dict[TagRef, tuple[str | None, tuple[bool, ...]]] | None = None,
) -> tuple[list[str], npt.NDArray[np.float32]]:
    """Return ``(asset paths, X)`` with one row per asset seen in the window.

    Assets are the machine paths (``enterprise/site/area/line/machine``) matching
    ``assets_glob``. A feature with no matching tag is NaN; callers drop such rows. ``cache``
    (one per ``assets_glob`` and ``specs``) keeps the glob matching of each tag across windows.
    """
    if cache is None:
        cache = {}
    plans = []
    for t in w.tags:
        plan = cache.get(t)
        if plan is None:
            plan = cache[t] = _tag_plan(t, assets_glob, specs)
        plans.append(plan)
    by_asset: dict[str, list[int]] = {}
    for i, (asset, _) in enumerate(plans):
        if asset is not None:
            by_asset.setdefault(asset, []).append(i)
    assets = sorted(by_asset)
    X = np.full((len(assets), len(specs)), np.nan, np.float32)
    cols: dict[str, int] = {s.name: j for j, s in enumerate(specs)}
    for j, spec in enumerate(specs):
        stat: npt.NDArray[np.float64] = getattr(w, spec.stat)
        if spec.scope == "site":
            idx = [i for i, (_, feeds) in enumerate(plans) if feeds[j]]
            X[:, j] = _reduce(stat[idx].astype(np.float64), spec.reduce) / spec.scale
            continue
        for a, asset in enumerate(assets):
            idx = [i for i in by_asset[asset] if plans[i][1][j]]
            X[a, j] = _reduce(stat[idx].astype(np.float64), spec.reduce) / spec.scale
    for j, spec in enumerate(specs):
        if spec.minus is not None:
            X[:, j] -= X[:, cols[spec.minus]]
    return assets, X


def _resolve(path: Path, info: ValidationInfo) -> Path:
    """Resolve a model path against the site file's folder; the file must exist."""
    base = (info.context or {}).get("base_dir")
    resolved = path if path.is_absolute() or base is None else (Path(base) / path).resolve()
    if not resolved.is_file():
        msg = f"model file {resolved} does not exist"
        raise ValueError(msg)
    return resolved


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A model file and how to read its output as a score in [0, 1] or as raw score.

    A relative ``path`` in a site file is resolved against the site file's folder.
    """

    __pydantic_config__ = ConfigDict(extra="forbid")

    name: str
    path: Annotated[Path, AfterValidator(_resolve)]
    output: str
    column: int | None = None
    negate: bool = False
    threshold: float | None = None


@dataclass(slots=True)
class _Session:
    spec: ModelSpec
    session: Any
    input_name: str


_SESSIONS: dict[Path, Any] = {}


def _session(m: ModelSpec) -> Any:
    """Load (once per process) the onnxruntime session of a model file."""
    sess = _SESSIONS.get(m.path)
    if sess is not None:
        return sess
    import onnxruntime as ort

    try:
        opts = ort.SessionOptions()
        # One thread: the flow's worker is the unit of parallelism, not onnxruntime's pool.
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        sess = ort.InferenceSession(
            str(m.path), sess_options=opts, providers=["CPUExecutionProvider"]
        )
    except Exception as e:  # onnxruntime raises its own untyped errors
        msg = f"cannot load model {m.name} from {m.path}: {e}"
        raise InferenceError(msg) from e
    _SESSIONS[m.path] = sess
    return sess


@dataclass
class OnnxScorer:
    """Scores assets of each closed window with one or more ONNX models.

    A :class:`~operators._state.WindowEngine`: ``window`` gives the scores, ``settle`` the
    threshold events (on final windows, in window order).
    """

    window_ms: int
    assets: str
    features: tuple[FeatureSpec, ...]
    models: tuple[ModelSpec, ...]
    _sessions: list[_Session] = field(default_factory=list, init=False, repr=False)
    _raised: dict[str, set[str]] = field(default_factory=dict, init=False, repr=False)
    # Scores of windows not yet settled, by (window_ms, start_ms): settle reuses them.
    _last: dict[tuple[int, int], Any] = field(default_factory=dict, init=False, repr=False)
    _plans: dict[TagRef, tuple[str | None, tuple[bool, ...]]] = field(
        default_factory=dict, init=False, repr=False
    )
    calls: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self._plans = {}
        for m in self.models:
            sess = _session(m)
            inp = sess.get_inputs()[0]
            width = inp.shape[1] if len(inp.shape) > 1 else None
            if isinstance(width, int) and width != len(self.features):
                msg = (
                    f"model {m.name} expects {width} features but the site config lists "
                    f"{len(self.features)}: {[f.name for f in self.features]}"
                )
                raise InferenceError(msg)
            outputs = [o.name for o in sess.get_outputs()]
            if m.output not in outputs:
                msg = f"model {m.name} has no output {m.output!r}; it has {outputs}"
                raise InferenceError(msg)
            self._sessions.append(_Session(m, sess, inp.name))
            self._raised.setdefault(m.name, set())

    def __getstate__(self) -> dict[str, Any]:
        # Sessions are not picklable; recovery snapshots keep only the alarm state.
        return {
            "window_ms": self.window_ms,
            "assets": self.assets,
            "features": self.features,
            "models": self.models,
            "raised": self._raised,
            "calls": self.calls,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.window_ms = state["window_ms"]
        self.assets = state["assets"]
        self.features = state["features"]
        self.models = state["models"]
        self._sessions = []
        self._raised = state["raised"]
        self.calls = state["calls"]
        self._last = {}
        self.__post_init__()

    def score(self, X: npt.NDArray[np.float32]) -> dict[str, npt.NDArray[np.float64]]:
        """Run every model on ``X`` (one row per asset); returns model name -> scores."""
        out: dict[str, npt.NDArray[np.float64]] = {}
        for s in self._sessions:
            (res,) = s.session.run([s.spec.output], {s.input_name: X})
            self.calls += 1
            arr = np.asarray(res, np.float64)
            if s.spec.column is not None:
                arr = arr[:, s.spec.column]
            arr = arr.reshape(len(X))
            out[s.spec.name] = -arr if s.spec.negate else arr
        return out

    def _scored(
        self, w: WindowAggregates
    ) -> tuple[list[str], list[dict[str, float]], dict[str, npt.NDArray[np.float64]]] | None:
        """Assets with every feature, their features and their scores (None: no such asset)."""
        if w.window_ms != self.window_ms or not len(w):
            return None
        assets, X = assemble_features(w, self.assets, self.features, self._plans)
        complete = np.asarray(np.isfinite(X).all(axis=1), np.bool_)
        if not complete.any():
            return None
        assets = [a for a, ok in zip(assets, complete.tolist(), strict=True) if ok]
        X = np.ascontiguousarray(X[complete])
        names = [f.name for f in self.features]
        feats_of = [dict(zip(names, row, strict=True)) for row in X.tolist()]
        return assets, feats_of, self.score(X)

    def window(self, w: WindowAggregates) -> tuple[list[Kpi], list[Event]]:
        """Score the assets of a window (a KPI row per asset and model)."""
        got = self._scored(w)
        if got is None:
            self._last.pop((w.window_ms, w.start_ms), None)
            return [], []
        self._last[(w.window_ms, w.start_ms)] = got
        assets, feats_of, scores = got
        return [
            Kpi(a, s.spec.name, w.window_ms, w.start_ms, value, "", {"features": feats})
            for s in self._sessions
            for a, feats, value in zip(assets, feats_of, scores[s.spec.name].tolist(), strict=True)
        ], []

    def settle(self, w: WindowAggregates) -> tuple[list[Kpi], list[Event]]:
        """Events where a final window's score crosses its model's threshold."""
        got = self._last.pop((w.window_ms, w.start_ms), None) or self._scored(w)
        for key in [k for k in self._last if k[1] < w.start_ms]:  # revisions of settled ones
            del self._last[key]
        if got is None:
            return [], []
        assets, feats_of, scores = got
        events: list[Event] = []
        end = w.start_ms + w.window_ms
        for s in self._sessions:
            name, thr = s.spec.name, s.spec.threshold
            if thr is None:
                continue
            raised = self._raised[name]
            for a, feats, value in zip(assets, feats_of, scores[name].tolist(), strict=True):
                if value >= thr and a not in raised:
                    raised.add(a)
                    state = "raised"
                elif value < thr and a in raised:
                    raised.discard(a)
                    state = "cleared"
                else:
                    continue
                events.append(
                    Event(
                        kind="score",
                        rule=name,
                        path=a,
                        ts_ms=end,
                        severity="warning",
                        state=state,
                        message=f"{name} {value:.3f} (alert threshold {thr:g})",
                        details={
                            "score": value,
                            "threshold": thr,
                            "features": feats,
                            "window_start_ms": w.start_ms,
                        },
                    )
                )
        return [], events


def read_model_metadata(path: Path) -> dict[str, Any]:
    """Read the JSON metadata written next to the models by ``models/build.py``."""
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        msg = f"cannot read model metadata {path}: {e}"
        raise InferenceError(msg) from e
    return data
