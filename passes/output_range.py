"""Output-aware weight ranges: the clipping scale of each output channel chosen by the layer's
output error instead of the weight's own error.

Why: the MSE range search (`quant_math.mse_weight_scale`) weighs every weight alike, but an
error on a weight whose input is large or correlated with others costs more at the layer's
output. With G the layer input's second-moment matrix (`collect_grams`), the output error of
one output row is (w~ - w)^T G (w~ - w); this picks, per row, the clipping ratio of the row's
|max| that minimizes it, with nearest rounding (AdaRound then rounds on that grid).

Rule cases (`why_not_output_aware`): per-channel encodings only (one scale per output row),
and not grouped ConvTranspose (its encoding axis counts the channels of one group).
"""

from __future__ import annotations

import numpy as np

from onnxmp.passes.layer_inputs import LinearLayout
from onnxmp.records import TensorEncoding

RATIOS = np.linspace(0.2, 1.0, 41)  # fractions of each row's |max|, coarser than the MSE grid (G costs K^2)


def why_not_output_aware(layout: LinearLayout, enc: TensorEncoding) -> str | None:
    """Why the weight keeps its MSE range, None when its rows can each get their own scale."""
    if enc.axis is None:
        return "a per-tensor encoding (one scale for every row)"
    if layout.op_type == "ConvTranspose" and layout.groups > 1:
        return "a grouped ConvTranspose (its encoding axis counts one group's channels)"
    return None


def output_aware_scales(matrices: np.ndarray, gram: np.ndarray, qmax: int, start: np.ndarray) -> np.ndarray:
    """Row scales [groups, out, 1] minimizing (w~ - w)^T G (w~ - w) per row over `RATIOS`.

    `matrices` [groups, out, K]; `gram` [groups, K, K]; `start` [groups, out, 1], the current
    (MSE) scales, kept where no ratio does better (ties keep them too).
    """
    w = matrices.astype(np.float64)
    g = np.asarray(gram, np.float64)
    absmax = np.abs(w).max(axis=2, keepdims=True)
    best_scale = np.asarray(start, np.float64)
    best_err = _row_errors(w, best_scale, g, qmax)
    for ratio in RATIOS:
        scale = np.where(absmax > 0, absmax * ratio / qmax, best_scale)
        err = _row_errors(w, scale, g, qmax)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best_scale = np.where(better, scale, best_scale)
    return best_scale.astype(np.float32)


def _row_errors(w: np.ndarray, scale: np.ndarray, gram: np.ndarray, qmax: int) -> np.ndarray:
    """(w~ - w)^T G (w~ - w) per row, [groups, out, 1], nearest rounding at `scale`."""
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.clip(np.round(np.where(scale > 0, w / scale, 0.0)), -qmax, qmax)
    diff = np.float32(scale) * q - w  # the float32 scale the encoding stores
    return np.asarray(np.sum(np.matmul(diff, gram) * diff, axis=2, keepdims=True))
