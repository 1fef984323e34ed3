"""Pure numpy quantization math: qparams, quantize/dequantize, MSE range search, noise sums.

Why one module: the simulation (phase 1), the emitted QDQ model and the encodings file
must agree bit for bit, so every formula lives here once.

Uniform quantizer: x_int = clamp(round(x / s) + z, qmin, qmax), x_hat = s * (x_int - z).
Rounding is half-to-even, as ONNX QuantizeLinear does.
"""

from __future__ import annotations

import numpy as np

# Clipping ratios tried by the MSE search, as fractions of the observed range.
_CLIP_RATIOS = np.linspace(0.05, 1.0, 96)
_GRID_BLOCK_VALUES = 2**22  # float32 values of one block of the weight grid search (16 MiB)


def symmetric_scale(absmax: np.ndarray | float, bits: int) -> np.ndarray:
    """Scale of a symmetric signed quantizer on [-(2^(b-1)-1), 2^(b-1)-1].

    >>> bool(symmetric_scale(2.0, 8) == np.float32(2.0 / 127))
    True
    """
    qmax = 2 ** (bits - 1) - 1
    absmax = np.asarray(absmax, dtype=np.float64)
    return np.where(absmax > 0, absmax / qmax, 1.0).astype(np.float32)


def asymmetric_params(low: float, high: float, bits: int) -> tuple[np.float32, int]:
    """Scale and zero point of an unsigned asymmetric quantizer covering [low, high] and 0.

    >>> scale, zero_point = asymmetric_params(0.0, 2.55, 8)
    >>> bool(scale == np.float32(0.01)), zero_point
    (True, 0)
    """
    qmax = 2**bits - 1
    low, high = min(float(low), 0.0), max(float(high), 0.0)
    if high - low <= 0:
        return np.float32(1.0), 0
    scale = np.float32((high - low) / qmax)
    zero_point = int(np.clip(np.round(-low / float(scale)), 0, qmax))
    return scale, zero_point


def quantize(x: np.ndarray, scale, zero_point, qmin: int, qmax: int) -> np.ndarray:
    """Integers of `x` (int64); `scale`/`zero_point` broadcast against `x`.

    >>> quantize(np.array([-1.0, 0.5, 2.0]), 2 / 127, 0, -127, 127).tolist()
    [-64, 32, 127]
    """
    # float64 so that wide grids (int32 biases) clip exactly at their bounds
    scaled = np.round(np.asarray(x, dtype=np.float32) / np.asarray(scale, dtype=np.float32).astype(np.float64))
    return np.clip(scaled + np.asarray(zero_point, dtype=np.float64), qmin, qmax).astype(np.int64)


def dequantize(x_int: np.ndarray, scale, zero_point) -> np.ndarray:
    """Float values of quantized integers (float32, as DequantizeLinear computes them).

    >>> [round(float(v), 4) for v in dequantize(np.array([-64, 32, 127]), np.float32(2 / 127), 0)]
    [-1.0079, 0.5039, 2.0]
    """
    zp = np.asarray(zero_point, dtype=np.int64)
    return ((np.asarray(x_int, dtype=np.int64) - zp).astype(np.float32) * np.asarray(scale, np.float32))


def fake_quantize(x: np.ndarray, scale, zero_point, qmin: int, qmax: int) -> np.ndarray:
    """dequantize(quantize(x)): the value the quantized network sees.

    >>> round(float(fake_quantize(np.array([0.26]), np.float32(0.1), 0, 0, 255)[0]), 6)
    0.3
    """
    return dequantize(quantize(x, scale, zero_point, qmin, qmax), scale, zero_point)


def channel_view(w: np.ndarray, axis: int | None) -> np.ndarray:
    """`w` as [channels, rest] for per-channel statistics ([1, size] when axis is None)."""
    if axis is None:
        return w.reshape(1, -1)
    return np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)


def mse_weight_scale(w: np.ndarray, bits: int, axis: int | None) -> np.ndarray:
    """Per-channel symmetric scales minimizing mean squared error, by grid search.

    Each channel's clipping threshold is searched over fractions of its |max|; at 8 bits
    and above the search usually keeps the max, at 4 bits it clips outliers.

    The grid runs in float32 only, a block of ratios at a time (`_clip_errors`): the same
    numbers as `fake_quantize` (its integers are exact in float32), 3-4x faster, which
    matters on weights of 100 M parameters.

    >>> w = np.array([[1.0, -0.5, 0.25, 0.0], [0.1, 0.2, -0.05, 0.0]], np.float32)
    >>> mse_weight_scale(w, 8, axis=0).shape
    (2,)
    """
    flat = channel_view(np.asarray(w, np.float32), axis)
    absmax = np.abs(flat).max(axis=1)
    best_err = np.full(flat.shape[0], np.inf)
    best_scale = symmetric_scale(absmax, bits)
    block = max(1, _GRID_BLOCK_VALUES // max(1, flat.size))
    for first in range(0, len(_CLIP_RATIOS), block):
        scales = np.stack([symmetric_scale(absmax * r, bits) for r in _CLIP_RATIOS[first : first + block]])
        errors = _clip_errors(flat, scales, 2 ** (bits - 1) - 1)
        for scale, err in zip(scales, errors, strict=True):  # first minimum wins, as one ratio at a time
            better = err < best_err
            best_err = np.where(better, err, best_err)
            best_scale = np.where(better, scale, best_scale)
    return best_scale.astype(np.float32)


def _clip_errors(flat: np.ndarray, scales: np.ndarray, qmax: int) -> np.ndarray:
    """Mean squared error of each row of `flat` [C, K] at each row of `scales` [R, C]: [R, C].

    Float32 throughout: round(x / s) clipped to +-qmax is an integer float32 holds exactly,
    so s * q equals `dequantize(quantize(x))` bit for bit.
    """
    s = scales[:, :, None]
    with np.errstate(over="ignore", invalid="ignore"):  # huge weights: an infinite error loses
        return _squared_errors(flat, s, qmax)


def _squared_errors(flat: np.ndarray, s: np.ndarray, qmax: int) -> np.ndarray:
    q = np.divide(flat[None], s, dtype=np.float32)
    np.round(q, out=q)
    np.clip(q, -qmax, qmax, out=q)
    q *= s
    np.subtract(flat[None], q, out=q)
    np.square(q, out=q)
    return np.mean(q, axis=2)


def minmax_weight_scale(w: np.ndarray, bits: int, axis: int | None) -> np.ndarray:
    """Per-channel symmetric scales from |max| (no clipping)."""
    flat = channel_view(np.asarray(w, np.float32), axis)
    return symmetric_scale(np.abs(flat).max(axis=1), bits)


def mse_activation_range(counts: np.ndarray, edges: np.ndarray, bits: int) -> tuple[float, float]:
    """The asymmetric clipping range [low, high] minimizing expected squared error.

    Uses a histogram (so calibration memory does not grow with the data): values inside
    the range cost the rounding noise s^2/12, values outside cost their distance to the
    bound squared. Low and high are searched independently over fractions of the range.

    >>> counts = np.array([0, 0, 10, 10]); edges = np.array([-2.0, -1.0, 0.0, 1.0, 2.0])
    >>> mse_activation_range(counts, edges, 8)
    (0.0, 2.0)
    """
    counts = np.asarray(counts, np.float64)
    left, right = np.asarray(edges[:-1], np.float64), np.asarray(edges[1:], np.float64)
    width = np.maximum(right - left, 1e-30)
    nonzero = np.flatnonzero(counts)
    if nonzero.size == 0:
        return 0.0, 0.0
    low_obs, high_obs = min(float(left[nonzero[0]]), 0.0), max(float(right[nonzero[-1]]), 0.0)
    highs = high_obs * _CLIP_RATIOS[:, None]  # [R, 1]
    # mass beyond a bound, as the mean of (x - bound)^2 over each bin's uniform spread
    above = (np.clip(right - highs, 0, None) ** 3 - np.clip(left - highs, 0, None) ** 3) / (3 * width)
    levels = 2**bits - 1
    total = counts.sum()
    best = (np.inf, low_obs, high_obs)
    for low in (low_obs * _CLIP_RATIOS) if low_obs < 0 else (0.0,):
        below = (np.clip(low - left, 0, None) ** 3 - np.clip(low - right, 0, None) ** 3) / (3 * width)
        scale = (highs[:, 0] - low) / levels
        err = (counts * (above + below)).sum(axis=1) + total * scale**2 / 12
        k = int(np.argmin(err))
        if err[k] < best[0]:
            best = (float(err[k]), float(low), float(highs[k, 0]))
    return best[1], best[2]


def signal_and_noise(reference: np.ndarray, approximate: np.ndarray) -> tuple[float, float]:
    """Sums of squares of `reference` and of `reference - approximate`, in float64.

    Sums, not means, so accumulating over batches gives the same value at any batch size.

    >>> signal_and_noise(np.array([3.0, 4.0]), np.array([3.0, 3.0]))
    (25.0, 1.0)
    """
    ref = np.asarray(reference, np.float64)
    diff = ref - np.asarray(approximate, np.float64)
    return float(np.sum(ref * ref)), float(np.sum(diff * diff))


def weight_scale(w: np.ndarray, bits: int, axis: int | None, *, mse: bool) -> np.ndarray:
    """Scales of a symmetric signed (per-channel along `axis`) weight quantizer: MSE or |max|.

    >>> weight_scale(np.array([[1.0, -0.5], [0.25, 0.1]], np.float32), 8, 0, mse=False).tolist()
    [0.007874015718698502, 0.0019685039296746254]
    """
    return mse_weight_scale(w, bits, axis) if mse else minmax_weight_scale(w, bits, axis)


def broadcast_shape(rank: int, axis: int | None) -> list[int]:
    """The shape a per-channel vector takes to broadcast along `axis` of a rank-`rank` tensor.

    >>> broadcast_shape(4, 0), broadcast_shape(2, 1), broadcast_shape(3, None)
    ([-1, 1, 1, 1], [1, -1], [1, 1, 1])
    """
    shape = [1] * rank
    if axis is not None:
        shape[axis] = -1
    return shape
