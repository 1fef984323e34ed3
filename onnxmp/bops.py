"""MACs per op and BOPs of a plan, relative to W8A16 everywhere.

Why: the search trades accuracy for cost, and the cost a device pays scales with
multiply-accumulates times operand bit-widths: BOPs = sum over ops of MACs * b_w * b_a
(b_a1 * b_a2 for activation x activation MatMul). Relative BOPs divide by the same model
with every quantized op at W8A16, so W8A8 everywhere is 0.5 and W4A8 everywhere 0.25.
MACs are counted per sample (batch 1) at the shapes the run sees: symbolic dims are taken
from the calibration data (or `onnxmp groups --input-shape`), and shape arithmetic that
reads them (Shape -> Gather -> Unsqueeze -> Slice of a position-id table, as transformer
exports have) is evaluated so that no MatMul is left with an unknown sequence length.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference
from onnx.reference import ReferenceEvaluator

from onnxmp import large_model
from onnxmp.graph import ATTR_TRANS_A, DataflowGraph, build, get_attribute
from onnxmp.records import Candidate, GroupAnalysis, Plan, QuantizerGroup

REFERENCE = Candidate(8, 16)
# Ops of shape arithmetic that `concrete_graph` evaluates when all their inputs are known
# integer constants (their outputs are small integer tensors: shapes, indices, lengths).
_SHAPE_OPS = frozenset({
    "Cast", "Concat", "ConstantOfShape", "Div", "Equal", "Expand", "Gather", "Mul", "Add", "Sub",
    "Range", "Reshape", "Slice", "Squeeze", "Unsqueeze", "Where", "Min", "Max", "ReduceProd",
})
_SHAPE_VALUE_MAX = 4096  # elements: larger integer results are data, not shapes
_FOLD_ROUNDS = 4


def concrete_graph(
    model: onnx.ModelProto, sample_shapes: Mapping[str, Sequence[int]], *, limits: large_model.SizeLimits | None = None
) -> DataflowGraph:
    """Index of a copy of `model` whose inputs have the given shapes (one run's feeds).

    Shape inference alone leaves a dynamic sequence axis unknown when it reaches a MatMul
    through a Slice whose end is computed (Shape -> Gather -> Unsqueeze): ONNX reads Slice
    bounds only from constants. So the integer shape arithmetic is evaluated and written
    into the copy as constants, and shapes are inferred again, until nothing changes.
    The index is for MACs, which need names, dims and op types only: a large model
    (`large_model.is_large` under `limits`) is copied without its weights (shapes and small vectors stay inline).
    """
    if large_model.is_large(model, limits=limits):
        fixed = large_model.weightless(model, large_model.weights(model, limits=limits))
    else:
        fixed = onnx.ModelProto()
        fixed.CopyFrom(model)
    del fixed.graph.value_info[:]
    for info in fixed.graph.input:
        if info.name not in sample_shapes:
            continue
        shape = list(sample_shapes[info.name])
        dims = info.type.tensor_type.shape.dim
        for dim, value in zip(dims, shape, strict=True):
            dim.Clear()
            dim.dim_value = int(value)
    inferred = shape_inference.infer_shapes(fixed, data_prop=True)
    for _ in range(_FOLD_ROUNDS):
        if not _fold_shape_arithmetic(inferred):
            break
        del inferred.graph.value_info[:]
        inferred = shape_inference.infer_shapes(inferred, data_prop=True)
    return build(inferred)


def _fold_shape_arithmetic(model: onnx.ModelProto) -> bool:
    """Replace (in place) Shape of known shapes and integer shape ops on constants by initializers.

    Returns whether anything was replaced.
    """
    graph = model.graph
    known = {t.name: numpy_helper.to_array(t) for t in graph.initializer if not large_model.is_stub(t)}
    shapes = build(model).shapes
    kept, folded = [], []
    for node in graph.node:
        value = _shape_value(node, known, shapes)
        if value is None:
            kept.append(node)
            continue
        known[node.output[0]] = value
        folded.append(numpy_helper.from_array(value, node.output[0]))
    if folded:
        del graph.node[:]
        graph.node.extend(kept)
        graph.initializer.extend(folded)
    return bool(folded)


def _shape_value(node: onnx.NodeProto, known: Mapping[str, np.ndarray], shapes) -> np.ndarray | None:
    """The value of `node`'s single output if it is shape arithmetic on known values, else None."""
    if len(node.output) != 1:
        return None
    if node.op_type == "Shape":
        shape = shapes.get(node.input[0])
        if shape is None or not all(isinstance(d, int) for d in shape) or node.attribute:
            return None
        return np.array(shape, np.int64)
    if node.op_type not in _SHAPE_OPS or not all(t in known for t in node.input if t):
        return None
    if not all(known[t].dtype.kind in "iub" for t in node.input if t):
        return None
    (value,) = ReferenceEvaluator(node).run(None, {t: known[t] for t in node.input if t})
    value = np.asarray(value)
    if value.dtype.kind not in "iub" or value.size > _SHAPE_VALUE_MAX:
        return None
    return value


def macs_per_op(graph: DataflowGraph) -> dict[str, int]:
    """MACs of every Conv, ConvTranspose, Gemm and MatMul whose shapes are known."""
    result = {}
    for name in graph.order:
        node = graph.nodes[name]
        counter = _COUNTERS.get(node.op_type)
        if counter is None:
            continue
        macs = counter(graph, node)
        if macs is not None:
            result[name] = int(macs)
    return result


def _shape(graph: DataflowGraph, tensor: str) -> tuple[int, ...] | None:
    shape = graph.shapes.get(tensor)
    if shape is None or not all(isinstance(d, int) and d > 0 for d in shape):
        return None
    return tuple(int(d) for d in shape if d is not None)


def _conv_macs(graph: DataflowGraph, node) -> int | None:
    """Output elements x (input channels / groups) x kernel size."""
    out, weight = _shape(graph, node.output[0]), _shape(graph, node.input[1])
    if out is None or weight is None:
        return None
    return int(np.prod(out)) * int(np.prod(weight[1:]))


def _conv_transpose_macs(graph: DataflowGraph, node) -> int | None:
    """Input elements x (output channels / groups) x kernel size."""
    inp, weight = _shape(graph, node.input[0]), _shape(graph, node.input[1])
    if inp is None or weight is None:
        return None
    # weight is [C_in, C_out/group, k...]: each input element feeds C_out/group x k outputs
    return int(np.prod(inp)) * int(np.prod(weight[1:]))


def _gemm_macs(graph: DataflowGraph, node) -> int | None:
    a = _shape(graph, node.input[0])
    out = _shape(graph, node.output[0])
    if a is None or out is None:
        return None
    k = a[0] if get_attribute(node, ATTR_TRANS_A, 0) else a[1]
    return out[0] * out[1] * k


def _matmul_macs(graph: DataflowGraph, node) -> int | None:
    """Output elements x the contracted dimension (batched and broadcast shapes included)."""
    a = _shape(graph, node.input[0])
    out = _shape(graph, node.output[0])
    if a is None or out is None:
        return None
    return int(np.prod(out)) * a[-1]


_COUNTERS = {
    "Conv": _conv_macs,
    "ConvTranspose": _conv_transpose_macs,
    "Gemm": _gemm_macs,
    "MatMul": _matmul_macs,
}


def op_bits(graph: DataflowGraph, op: str, candidate: Candidate) -> int:
    """b_w * b_a of an op at `candidate`; b_a^2 for an activation x activation MatMul."""
    node = graph.nodes[op]
    has_weight = any(graph.is_constant(t) for t in node.input[:2])
    if has_weight and candidate.w_bits is not None:
        return candidate.w_bits * candidate.a_bits
    return candidate.a_bits * candidate.a_bits


def group_bops(graph: DataflowGraph, analysis: GroupAnalysis, macs: Mapping[str, int]) -> dict[str, dict[Candidate, int]]:
    """BOPs of each group at each of its candidates (0 for groups without MACs)."""
    return {
        group.id: {c: sum(macs.get(op, 0) * op_bits(graph, op, c) for op in group.ops) for c in group.candidates}
        for group in analysis.groups
    }


def reference_bops(graph: DataflowGraph, analysis: GroupAnalysis, macs: Mapping[str, int]) -> int:
    """BOPs of the model with every quantized op at W8A16."""
    return sum(macs.get(op, 0) * op_bits(graph, op, REFERENCE) for group in analysis.groups for op in group.ops)


def relative_bops(plan: Plan, table: Mapping[str, Mapping[Candidate, int]], reference: int) -> float:
    """BOPs of `plan` divided by `reference` (W8A16 everywhere)."""
    if reference == 0:
        return 0.0
    return sum(table[group][candidate] for group, candidate in plan.items()) / reference


def macs_share(group: QuantizerGroup, macs: Mapping[str, int]) -> float:
    """The group's fraction of all MACs (0.0 when the model has none)."""
    total = sum(macs.values())
    return sum(macs.get(op, 0) for op in group.ops) / total if total else 0.0


def storage_bits(bits: int) -> int:
    """Bits a weight of `bits` takes in the model file: int4 (two a byte), int8 or int16.

    >>> [storage_bits(b) for b in (3, 4, 6, 8, 12)]
    [4, 4, 8, 8, 16]
    """
    return 4 if bits <= 4 else 8 if bits <= 8 else 16


def weight_bytes(graph: DataflowGraph, analysis: GroupAnalysis, plan: Plan, *, table_bits: int | None = None) -> int:
    """Bytes of the model's constants deployed with `plan` (the model-size column of pareto.csv).

    Why: BOPs count computation; a small encoder's largest tensor is its embedding table,
    which no kernel multiplies (a Gather reads rows of it), so only the size shows what
    weight-only table quantization saves. Quantized weights count at their storage width
    (`storage_bits`), Gather tables at `table_bits` when given, every other constant at its
    own dtype; scales and zero points are not counted.
    """
    bits: dict[str, int] = {}
    for group in analysis.groups:
        candidate = plan.get(group.id)
        if candidate is not None and candidate.w_bits is not None and candidate.w_bits <= 16:  # 32: left float
            bits.update(dict.fromkeys(group.weights, storage_bits(candidate.w_bits)))
    if table_bits is not None:
        bits.update(dict.fromkeys(analysis.tables, storage_bits(table_bits)))
    total_bits = 0
    for name, tensor in graph.constants.items():
        width = bits.get(name, 8 * helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize)
        total_bits += int(np.prod(tensor.dims, dtype=np.int64)) * width
    return total_bits // 8
