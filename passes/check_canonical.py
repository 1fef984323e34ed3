"""Check that canonicalization kept the model's meaning, on one calibration batch.

Why: canonicalization hands the model to the version converter, graphsurgeon's folding and
ONNX Runtime; when one of them gets a model wrong (a converter gap, an op folded with the
wrong semantics) every later stage crashes deep inside ONNX Runtime or quantizes a
different function. Running the canonical model once against the original catches it at
the start, and re-running the passes one by one names the pass that broke it.

Rule cases:
1. The canonical model must keep the ranks of the inputs and run on the feeds (ONNX
   Runtime refusing to load it is onnxmp's bug, `InternalError`, exit 3); when the
   original runs too (ONNX Runtime has kernels for its opset), every output must agree
   within a relative 1e-3 of its largest magnitude.
2. On a failure the passes are replayed on the original, each result checked the same
   way; the error names the first pass whose result fails (when the original itself does
   not run, the pass after the last result that ran, or the one that changed the opset).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import onnx
import onnxruntime as ort

from onnxmp import runtime
from onnxmp.errors import InternalError, ModelError, PassError

logger = logging.getLogger(__name__)

RELATIVE_TOLERANCE = 1e-3
Pass = Callable[[onnx.ModelProto], onnx.ModelProto]
Outputs = Mapping[str, np.ndarray]


def check_canonical(
    original: onnx.ModelProto, canonical: onnx.ModelProto, feeds: Mapping[str, np.ndarray], passes: Sequence[Pass]
) -> None:
    """Raise `PassError` naming the pass after which the model no longer runs or agrees with `original`."""
    want = _outputs(original, feeds, user=True)
    if want is None:
        logger.info("check_canonical: ONNX Runtime cannot run the original model; checking the canonical one runs")
    if _why_not_equivalent(canonical, feeds, want, load_or_fail=True) is None:
        return
    name, reason = _first_broken(original, feeds, want, passes)
    raise PassError(f"canonicalization broke the model: after pass {name}, {reason}")


def _first_broken(
    original: onnx.ModelProto, feeds: Mapping[str, np.ndarray], want: Outputs | None, passes: Sequence[Pass]
) -> tuple[str, str | None]:
    """Replay `passes`: the first whose result fails (with `want` known), else the pass after
    the last result that ran, else (nothing ran, as for opsets ONNX Runtime has no kernels
    for) the pass that changed the opset."""
    model, results = original, []
    for run in passes:
        before = _opset(model)
        model = run(model)
        results.append((run.__name__, _why_not_equivalent(model, feeds, want), _opset(model) != before))
    if want is not None:
        return next((name, reason) for name, reason, _ in results if reason is not None)
    ran = [i for i, (_, reason, _) in enumerate(results) if reason is None]
    if ran:
        name, reason, _ = results[ran[-1] + 1]
        return name, reason
    name, reason, _ = next((r for r in results if r[2]), results[-1])
    return name, reason


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _outputs(
    model: onnx.ModelProto, feeds: Mapping[str, np.ndarray], *, user: bool = False, load_or_fail: bool = False
) -> dict[str, np.ndarray] | None:
    """The model's outputs on `feeds`, or None when ONNX Runtime cannot load or run it.

    `user`: the user's own model (`runtime.user_session`). `load_or_fail`: ONNX Runtime
    refusing to load this model onnxmp built is onnxmp's bug (`InternalError`, exit 3) and
    propagates; a run that fails is a finding (a pass changed what the model computes).
    """
    try:
        sess = runtime.user_session(model) if user else runtime.session(model)
    except (ModelError, InternalError):
        if load_or_fail:
            raise
        return None
    try:
        names = [o.name for o in sess.get_outputs()]
        quiet = ort.RunOptions()
        quiet.log_severity_level = 4  # a failed run is a finding here, not an error to print
        return dict(zip(names, sess.ort.run(names, dict(feeds), quiet), strict=True))
    except Exception as e:  # ORT's run errors (shape mismatches, missing kernels) have no common type
        logger.debug("check_canonical: run failed: %s", e)
        return None


def _why_not_equivalent(
    model: onnx.ModelProto, feeds: Mapping[str, np.ndarray], want: Outputs | None, *, load_or_fail: bool = False
) -> str | None:
    """None when `model` runs on `feeds` and matches `want` (if known); else the reason."""
    for info in model.graph.input:  # the feeds have the original's ranks
        declared = info.type.tensor_type
        if info.name in feeds and declared.HasField("shape") and len(declared.shape.dim) != feeds[info.name].ndim:
            return f"input {info.name!r} has rank {len(declared.shape.dim)}, the original {feeds[info.name].ndim}"
    got = _outputs(model, feeds, load_or_fail=load_or_fail)
    if got is None:
        return "ONNX Runtime cannot run it on the first calibration batch"
    for name, expected in (want or {}).items():
        value = got.get(name)
        if value is None or value.shape != expected.shape:
            return f"output {name!r} has shape {None if value is None else value.shape}, the original {expected.shape}"
        scale = max(float(np.max(np.abs(expected), initial=0.0)), 1e-12)
        error = float(np.max(np.abs(value.astype(np.float64) - expected), initial=0.0))
        if not error <= RELATIVE_TOLERANCE * scale:
            return f"output {name!r} differs from the original by {error:.3g} (largest value {scale:.3g})"
    return None
