"""Calibration: an encoding for every quantized tensor at every bit-width it may take.

Why: each group may end at any of its candidates, and the best clipping range depends on
the bit-width (a 4-bit weight clips outliers that an 8-bit one keeps), so ranges are set
per (tensor, bits) once, before any search.

Rule cases:
1. Weights: symmetric signed, per output channel (or per tensor if the profile says so),
   scale by MSE grid search (or |max| with RangeMethod.MINMAX).
2. Activations: asymmetric unsigned per tensor (symmetric signed if the profile says so),
   range by MSE over a streaming histogram (`collect_histograms.activation_histograms`,
   memory independent of the number of samples); RangeMethod.MINMAX uses the observed range.
3. Activations whose range the op defines (`known_ranges`: Softmax output in [0, 1]) take
   that range, without statistics.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from types import MappingProxyType

import numpy as np
import onnx

from onnxmp import quant_math
from onnxmp.calib_data import CalibrationSet
from onnxmp.graph import DataflowGraph, attributes, output_channel_axis
from onnxmp.hw_profile import HwProfile
from onnxmp.passes.collect_histograms import activation_histograms
from onnxmp.passes.known_ranges import known_range
from onnxmp.passes.weight_progress import WeightProgress
from onnxmp.records import Granularity, Grid, GroupAnalysis, RangeMethod, TensorEncoding

logger = logging.getLogger(__name__)

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
            w_bits = candidate.w_bits  # None: a group without weights
            for weight in group.weights:
                if w_bits is not None:
                    weight_bits.setdefault(weight, set()).add(w_bits)
            for tensor in group.activations:
                act_bits.setdefault(tensor, set()).add(candidate.a_bits)
    encodings: dict[tuple[str, int], TensorEncoding] = {}
    progress = WeightProgress(sum(math.prod(graph.constants[w].dims) * len(b) for w, b in weight_bits.items()))
    for weight, bits_set in weight_bits.items():
        axis = weight_axis(graph, weight) if profile.weight_granularity is Granularity.PER_CHANNEL else None
        for bits in sorted(bits_set):
            encodings[(weight, bits)] = encode_weight(graph.constant(weight), weight, bits, axis, method)
            progress.done(math.prod(graph.constants[weight].dims), f"{weight} @ {bits} bits")
    if profile.embeddings is not None:  # weight-only Gather tables, one scale per row or per table
        row_axis = 0 if profile.embeddings.granularity is Granularity.PER_CHANNEL else None
        for table in analysis.tables:
            bits = profile.embeddings.bits
            encodings[(table, bits)] = encode_weight(graph.constant(table), table, bits, row_axis, method)
    fixed = {t: r for t in act_bits if (r := known_range(graph, t)) is not None}
    histograms = activation_histograms(model, calib, sorted(set(act_bits) - set(fixed)), batch_size=batch_size)
    for tensor, bits_set in act_bits.items():
        counts, edges = histograms[tensor] if tensor not in fixed else (np.ones(1), np.array(fixed[tensor]))
        for bits in sorted(bits_set):
            encodings[(tensor, bits)] = encode_activation(
                counts, edges, tensor, bits, method if tensor not in fixed else RangeMethod.MINMAX,
                symmetric=profile.activation_symmetric,
            )
    logger.info("calibrate: %d encodings for %d weights and %d activations", len(encodings), len(weight_bits), len(act_bits))
    return MappingProxyType(dict(sorted(encodings.items())))


def weight_axis(graph: DataflowGraph, weight: str) -> int | None:
    """The output-channel axis of `weight` for its first consumer, None when unclear."""
    consumer = graph.consumers(weight)[0]
    position = 1 if consumer.op_type == "MatMul" and consumer.input[1] == weight else list(consumer.input).index(weight)
    return output_channel_axis(consumer.op_type, position, len(graph.shapes.get(weight, ())), attributes(consumer))


def encode_weight(w: np.ndarray, name: str, bits: int, axis: int | None, method: RangeMethod) -> TensorEncoding:
    scale = quant_math.weight_scale(w, bits, axis, mse=method is RangeMethod.MSE)
    return TensorEncoding(
        name=name, bits=bits, scale=tuple(float(s) for s in scale), zero_point=(0,) * len(scale),
        grid=Grid.SYMMETRIC_SIGNED, axis=axis,
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
        symmetric_scale = quant_math.symmetric_scale(max(abs(low), abs(high)), bits)
        return TensorEncoding(name, bits, (float(symmetric_scale),), (0,), grid=Grid.SYMMETRIC_SIGNED)
    scale, zero_point = quant_math.asymmetric_params(low, high, bits)
    return TensorEncoding(name, bits, (float(scale),), (zero_point,), grid=Grid.ASYMMETRIC_UNSIGNED)
