"""Calibration: an encoding for every quantized tensor at every bit-width it may take.

Why: each group may end at any of its candidates, and the best clipping range depends on
the bit-width (a 4-bit weight clips outliers that an 8-bit one keeps), so ranges are set
per (tensor, bits) once, before any search.

Rule cases:
1. Weights: symmetric signed, per output channel (or per tensor if the profile says so),
   scale by MSE grid search (or |max| with RangeMethod.MINMAX).
2. Activations: asymmetric unsigned per tensor, range by MSE over a streaming histogram
   (two passes over the data: min/max, then a fixed-bin histogram), so memory does not grow
   with the number of samples; RangeMethod.MINMAX uses the observed range.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from types import MappingProxyType

import numpy as np
import onnx

from onnxmp import quant_math, runtime
from onnxmp.calib_data import CalibrationSet
from onnxmp.graph import ATTR_GROUP, ATTR_TRANS_B, DataflowGraph, get_attribute
from onnxmp.hw_profile import HwProfile
from onnxmp.records import Granularity, GroupAnalysis, RangeMethod, TensorEncoding

logger = logging.getLogger(__name__)

HISTOGRAM_BINS = 2048
HISTOGRAM_SAMPLES = 2**20
Encodings = Mapping[tuple[str, int], TensorEncoding]


def calibrate(
    model: onnx.ModelProto,
    graph: DataflowGraph,
    analysis: GroupAnalysis,
    calib: CalibrationSet,
    *,
    profile: HwProfile,
    method: RangeMethod = RangeMethod.MSE,
    batch_size: int = 16,
) -> Encodings:
    """Encodings keyed by (tensor, bits) for every weight and activation in `analysis`."""
    weight_bits: dict[str, set[int]] = {}
    act_bits: dict[str, set[int]] = {}
    for group in analysis.groups:
        for candidate in group.candidates:
            for weight in group.weights:
                weight_bits.setdefault(weight, set()).add(candidate.w_bits)
            for tensor in group.activations:
                act_bits.setdefault(tensor, set()).add(candidate.a_bits)
    encodings: dict[tuple[str, int], TensorEncoding] = {}
    for weight, bits_set in weight_bits.items():
        axis = weight_axis(graph, weight) if profile.weight_granularity is Granularity.PER_CHANNEL else None
        for bits in sorted(bits_set):
            encodings[(weight, bits)] = encode_weight(graph.constant(weight), weight, bits, axis, method)
    histograms = activation_histograms(model, calib, sorted(act_bits), batch_size=batch_size)
    for tensor, bits_set in act_bits.items():
        counts, edges = histograms[tensor]
        for bits in sorted(bits_set):
            encodings[(tensor, bits)] = encode_activation(
                counts, edges, tensor, bits, method, symmetric=profile.activation_symmetric
            )
    logger.info("calibrate: %d encodings for %d weights and %d activations", len(encodings), len(weight_bits), len(act_bits))
    return MappingProxyType(dict(sorted(encodings.items())))


def weight_axis(graph: DataflowGraph, weight: str) -> int | None:
    """The output-channel axis of `weight` for its first consumer, None when unclear."""
    consumer = graph.consumers(weight)[0]
    rank = len(graph.shapes.get(weight, ()))
    if consumer.op_type == "Conv":
        return 0
    if consumer.op_type == "ConvTranspose":
        return 1 if get_attribute(consumer, ATTR_GROUP, 1) == 1 else None
    if consumer.op_type == "Gemm":
        if consumer.input[0] == weight:
            return None
        return 0 if get_attribute(consumer, ATTR_TRANS_B, 0) else 1
    if consumer.op_type == "MatMul" and rank == 2:
        # batched (rank > 2) weights stay per tensor: ONNX Runtime's integer MatMul
        # kernels accept per-column zero points only for 2-D weights
        return 1 if consumer.input[1] == weight else 0
    return None


def encode_weight(w: np.ndarray, name: str, bits: int, axis: int | None, method: RangeMethod) -> TensorEncoding:
    scale, _, _, _ = quant_math.weight_encoding_params(w, bits, axis, mse=method is RangeMethod.MSE)
    return TensorEncoding(
        name=name, bits=bits, scale=tuple(float(s) for s in scale), zero_point=(0,) * len(scale),
        signed=True, symmetric=True, axis=axis,
    )


def encode_activation(
    counts: np.ndarray, edges: np.ndarray, name: str, bits: int, method: RangeMethod, *, symmetric: bool
) -> TensorEncoding:
    if method is RangeMethod.MSE:
        low, high = quant_math.mse_activation_range(counts, edges, bits)
    else:
        nonzero = np.flatnonzero(counts)
        low, high = (float(edges[nonzero[0]]), float(edges[nonzero[-1] + 1])) if nonzero.size else (0.0, 0.0)
    if symmetric:
        scale = quant_math.symmetric_scale(max(abs(low), abs(high)), bits)
        return TensorEncoding(name, bits, (float(scale),), (0,), signed=True, symmetric=True)
    scale, zero_point = quant_math.asymmetric_params(low, high, bits)
    return TensorEncoding(name, bits, (float(scale),), (zero_point,), signed=False, symmetric=False)


def activation_histograms(
    model: onnx.ModelProto, calib: CalibrationSet, tensors: Iterable[str], *, batch_size: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per tensor (counts, edges) over all calibration samples, in two streaming passes."""
    tensors = list(tensors)
    if not tensors:
        return {}
    sess = runtime.session(runtime.with_outputs(model, tensors))
    low = dict.fromkeys(tensors, np.inf)
    high = dict.fromkeys(tensors, -np.inf)
    for outputs in runtime.run_batches(sess, calib.batches(batch_size), tensors):
        for t, value in outputs.items():
            low[t] = min(low[t], float(value.min()))
            high[t] = max(high[t], float(value.max()))
    edges = {t: np.linspace(min(low[t], 0.0), max(high[t], 0.0) or 1e-12, HISTOGRAM_BINS + 1) for t in tensors}
    counts = {t: np.zeros(HISTOGRAM_BINS, np.float64) for t in tensors}
    for outputs in runtime.run_batches(sess, calib.batches(batch_size), tensors):
        for t, value in outputs.items():
            counts[t] += _histogram(value, edges[t])
    return {t: (counts[t], edges[t]) for t in tensors}


def _histogram(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts of `values` in the equal-width bins `edges`, from at most ~1M evenly strided values.

    A fixed stride keeps it deterministic; the exact min/max come from the first pass, and
    a million values per batch pin a 2048-bin shape far below the rounding noise that
    decides the MSE range.
    """
    lo, hi = edges[0], edges[-1]
    flat = values.ravel()
    flat = flat[:: max(1, flat.size // HISTOGRAM_SAMPLES)]
    index = np.subtract(flat, np.float32(lo), dtype=np.float32)
    index *= np.float32(HISTOGRAM_BINS / (hi - lo))
    np.clip(index, 0, HISTOGRAM_BINS - 1, out=index)
    return np.bincount(index.astype(np.int32), minlength=HISTOGRAM_BINS).astype(np.float64)
