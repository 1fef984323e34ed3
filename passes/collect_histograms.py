"""Activation histograms for calibration, in two streaming passes reduced inside the graph.

Why: the MSE range of an activation needs its value distribution, and calibration memory
must not grow with the data. Pass 1 (ReduceMin, ReduceMax, Shape) finds each tensor's range;
pass 2 takes a strided subsample of each sample, binned here into fixed-width histograms.
Both passes drop the model's own outputs, so only small tensors leave ONNX Runtime and it
frees each activation once its statistics ran (they are added in an order that makes it run
them right after the activation, see `_latest_first`): exposing whole activations as outputs
kept every one of a batch alive at once (1.9 GB for EfficientNet-Lite0 at batch 16). The
subsample takes the same values of each sample whatever the batch size, so the encodings do
not depend on it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxmp import calib_data, runtime
from onnxmp.calib_data import CalibrationSet
from onnxmp.graph import all_names, unique_name

logger = logging.getLogger(__name__)

HISTOGRAM_BINS = 2048
# Values per sample that pass 2 bins (about 2**20 per batch of 16, as before): a fixed count
# per sample pins a 2048-bin shape far below the rounding noise that decides the MSE range.
HISTOGRAM_VALUES_PER_SAMPLE = 2**16
# Upper bound on one batch of pass-2 outputs (the float32 subsamples of every tensor).
HISTOGRAM_BATCH_BYTES = 64 * 2**20
INT64_MAX = np.iinfo(np.int64).max


def activation_histograms(
    model: onnx.ModelProto, calib: CalibrationSet, tensors: Iterable[str], *, batch_size: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per tensor (counts, edges) over all calibration samples, in two streaming passes.

    Pass 1 finds each tensor's exact min/max and its size per sample; pass 2 bins every
    `stride`-th value of each sample (dim 0 is the sample axis; at most about
    HISTOGRAM_VALUES_PER_SAMPLE values) into HISTOGRAM_BINS equal bins over
    [min(low, 0), max(high, 0)]. `batch_size` is an upper bound: pass 2 takes fewer samples
    at once when their subsamples would pass HISTOGRAM_BATCH_BYTES.
    """
    tensors = list(dict.fromkeys(tensors))
    if not tensors:
        return {}
    observed = _observe(model, calib, tensors, batch_size=batch_size)
    strides = {t: max(1, observed[t].sample_size // HISTOGRAM_VALUES_PER_SAMPLE) for t in tensors}
    # ceil(size / stride) values per sample leave the graph (below 2x HISTOGRAM_VALUES_PER_SAMPLE)
    values_per_sample = sum(-(-observed[t].sample_size // strides[t]) for t in tensors)
    batch = histogram_batch_size(values_per_sample, batch_size)
    logger.debug("calibrate: %d values per sample, pass 2 at batch %d", values_per_sample, batch)
    edges = {t: _edges(observed[t].low, observed[t].high) for t in tensors}
    counts = {t: np.zeros(HISTOGRAM_BINS, np.float64) for t in tensors}
    subsample_model, names = _with_subsample_outputs(
        model, {t: (observed[t].rank, strides[t]) for t in tensors}
    )
    sess = runtime.session(subsample_model)
    for outputs in runtime.run_batches(sess, calib.batches(batch), [names[t] for t in tensors]):
        for t in tensors:
            counts[t] += _histogram(outputs[names[t]], edges[t])
    return {t: (counts[t], edges[t]) for t in tensors}


def histogram_batch_size(values_per_sample: int, batch_size: int) -> int:
    """`batch_size`, lowered so one batch of float32 subsamples fits HISTOGRAM_BATCH_BYTES.

    >>> histogram_batch_size(2**20, 64)  # 4 MiB per sample
    16
    >>> histogram_batch_size(2**30, 64), histogram_batch_size(100, 8)
    (1, 8)
    """
    return max(1, min(batch_size, HISTOGRAM_BATCH_BYTES // (4 * max(1, values_per_sample))))


@dataclass(frozen=True, slots=True)
class _Observed:
    """What pass 1 saw of one tensor: its range, rank and values per sample (dims after 0)."""

    low: float
    high: float
    rank: int
    sample_size: int


def _observe(
    model: onnx.ModelProto, calib: CalibrationSet, tensors: list[str], *, batch_size: int
) -> dict[str, _Observed]:
    """Pass 1: exact min/max (reduced inside the graph) and shape of every tensor."""
    range_model, names = _with_range_outputs(model, tensors)
    sess = runtime.session(range_model)
    outputs = [name for t in tensors for name in names[t]]
    low = dict.fromkeys(tensors, np.inf)
    high = dict.fromkeys(tensors, -np.inf)
    rank = dict.fromkeys(tensors, 0)
    size = dict.fromkeys(tensors, 1)
    no_sample_axis = set()
    for feeds in calib.batches(batch_size):
        samples = len(next(iter(feeds.values())))
        (values,) = runtime.run_batches(sess, [feeds], outputs)
        for t in tensors:
            lo, hi, shape = (values[name] for name in names[t])
            low[t] = float(np.minimum(low[t], lo))  # NaN propagates, to be refused below
            high[t] = float(np.maximum(high[t], hi))
            rank[t] = len(shape)
            size[t] = max(size[t], int(np.prod(shape[1:])))
            if not shape.size or shape[0] != samples:
                no_sample_axis.add(t)
    calib_data.check_finite_ranges({t: (low[t], high[t]) for t in reversed(_latest_first(model, tensors))})
    if no_sample_axis:
        logger.info(
            "calibrate: %d tensors (e.g. %s) have no sample axis at dim 0; "
            "their histograms depend on the batch size",
            len(no_sample_axis),
            min(no_sample_axis),
        )
    return {t: _Observed(low[t], high[t], rank[t], size[t]) for t in tensors}


def _with_range_outputs(
    model: onnx.ModelProto, tensors: Iterable[str]
) -> tuple[onnx.ModelProto, dict[str, tuple[str, str, str]]]:
    """A copy of `model` whose only outputs are each tensor's min, max (float32 scalars) and shape.

    Returns the copy and, per tensor, the names of those three outputs.
    """
    edit = _OutputsEditor(model)
    names = {}
    for t in _latest_first(model, tensors):
        x = edit.as_float(t)
        low = edit.node("ReduceMin", [x], f"{t}_calib_min", keepdims=0)
        high = edit.node("ReduceMax", [x], f"{t}_calib_max", keepdims=0)
        shape = edit.node("Shape", [t], f"{t}_calib_shape")
        edit.output(low, onnx.TensorProto.FLOAT, [])
        edit.output(high, onnx.TensorProto.FLOAT, [])
        edit.output(shape, onnx.TensorProto.INT64, [None])
        names[t] = (low, high, shape)
    return edit.model, names


def _with_subsample_outputs(
    model: onnx.ModelProto, rank_stride: Mapping[str, tuple[int, int]]
) -> tuple[onnx.ModelProto, dict[str, str]]:
    """A copy of `model` whose only outputs are, per tensor, every stride-th value of each sample.

    Each output is float32 [samples, values] (a rank-0 tensor is one sample). Returns the copy
    and, per tensor, the name of its output.
    """
    edit = _OutputsEditor(model)
    names = {}
    for t in _latest_first(model, rank_stride):
        rank, stride = rank_stride[t]
        x = edit.as_float(t)
        if rank == 0:
            rows = edit.node("Reshape", [x, edit.constant(1, -1)], f"{t}_calib_rows")
        else:
            rows = edit.node("Flatten", [x], f"{t}_calib_rows", axis=1)
        starts, ends, axes = edit.constant(0), edit.constant(INT64_MAX), edit.constant(1)
        slice_inputs = [rows, starts, ends, axes, edit.constant(stride)]
        names[t] = edit.node("Slice", slice_inputs, f"{t}_calib_subsample")
        edit.output(names[t], onnx.TensorProto.FLOAT, [None, None])
    return edit.model, names


def _latest_first(model: onnx.ModelProto, tensors: Iterable[str]) -> list[str]:
    """`tensors` from the last computed to the first (graph inputs last), by producer position.

    Why: ONNX Runtime's default execution order is a reverse depth-first search from the leaf
    nodes that takes the last-added leaf first. Statistics nodes added latest tensor first thus
    run right after their tensor, which can then be freed; added in any other order, the
    first leaf taken pulls in the whole network and every tensor stays alive until its own
    statistics run (as memory-hungry as exposing them all as outputs).
    """
    position = {output: i for i, node in enumerate(model.graph.node) for output in node.output}
    return sorted(tensors, key=lambda t: position.get(t, -1), reverse=True)


class _OutputsEditor:
    """A copy of a model without its outputs, to which calibration nodes and outputs are added.

    The original outputs go so that ONNX Runtime keeps no activation to the end of a run,
    only the small outputs added here.
    """

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = onnx.ModelProto()
        self.model.CopyFrom(model)
        graph = self.model.graph
        infos = (*graph.input, *graph.value_info, *graph.output)
        self._elem_types = {v.name: v.type.tensor_type.elem_type for v in infos}
        del graph.output[:]
        self._taken = all_names(model)
        self._casts: dict[str, str] = {}
        self._constants: dict[tuple[int, ...], str] = {}

    def node(self, op_type: str, inputs: list[str], base: str, **attributes: object) -> str:
        """Append a uniquely named node with one output named after `base`; return the output."""
        output = unique_name(self._taken, base)
        name = unique_name(self._taken, f"calib/{output}")
        self.model.graph.node.append(helper.make_node(op_type, inputs, [output], name=name, **attributes))  # type: ignore[arg-type]
        return output

    def as_float(self, tensor: str) -> str:
        """`tensor` when it is float32, else its Cast to float32 (one per tensor)."""
        if self._elem_types.get(tensor) == onnx.TensorProto.FLOAT:
            return tensor
        if tensor not in self._casts:
            cast = self.node("Cast", [tensor], f"{tensor}_calib_float", to=onnx.TensorProto.FLOAT)
            self._casts[tensor] = cast
        return self._casts[tensor]

    def constant(self, *values: int) -> str:
        """An int64 [len(values)] initializer (one per distinct value)."""
        if values not in self._constants:
            name = unique_name(self._taken, "calib_const")
            value = numpy_helper.from_array(np.array(values, np.int64), name)
            self.model.graph.initializer.append(value)
            self._constants[values] = name
        return self._constants[values]

    def output(self, name: str, elem_type: int, shape: list[int | None]) -> None:
        self.model.graph.output.append(helper.make_tensor_value_info(name, elem_type, shape))


def _edges(low: float, high: float) -> np.ndarray:
    """HISTOGRAM_BINS equal bins over [min(low, 0), max(high, 0)] (never empty)."""
    return np.linspace(min(low, 0.0), max(high, 0.0) or 1e-12, HISTOGRAM_BINS + 1)


def _histogram(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts of all `values` in the equal-width bins `edges`, computed in float32.

    The subsample was taken in the graph, so every value counts; the clip puts the exact
    min/max of pass 1 (and float32 rounding at the ends) into the first and last bins.
    """
    lo, hi = edges[0], edges[-1]
    index = np.subtract(values.ravel(), np.float32(lo), dtype=np.float32)
    index *= np.float32(HISTOGRAM_BINS / (hi - lo))
    np.clip(index, 0, HISTOGRAM_BINS - 1, out=index)
    return np.bincount(index.astype(np.int32), minlength=HISTOGRAM_BINS).astype(np.float64)
