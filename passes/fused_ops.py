"""Which ops run inside another op's device kernel, and which tensors are attention masks.

Why: a device runs MatMul + bias as one fully connected kernel, folds a constant scaling
of its result into the requantization, and runs "scores + mask -> Softmax" as one masked
softmax. A quantizer between those ops does not exist on the device, so the groups must
not have one either (each would otherwise become its own A8/A16 group, and the search
would spend phase-1 evaluations on noise the device never makes). An additive attention
mask is a huge constant (about -1e4 or the float minimum) where tokens are padding: a
quantizer on it, or on a tensor it is added to, spends its whole range on the mask.

Rule cases:
1. Epilogue: an Add/Sub of a constant with one value per output channel (or one value),
   or a Mul/Div by a constant scalar, whose other operand is the output of a quantized
   MatMul/Gemm/Conv (or of such an epilogue) read by nothing else, joins that op's kernel.
2. Mask: a float tensor computed only from integer or boolean model inputs and constants
   (Cast, Sub, Mul, Unsqueeze, ... of `attention_mask`) is a mask. It never gets a
   quantizer; the ops computing it stay in float with a reason.
3. Masked softmax: an op adding a mask to another tensor joins the Softmax that alone reads
   its result when the profile quantizes Softmax; otherwise it stays in float with a reason.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import onnx

from onnxmp.graph import DataflowGraph
from onnxmp.hw_profile import HwProfile

KERNEL_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
_BIAS_OPS = frozenset({"Add", "Sub"})
_SCALE_OPS = frozenset({"Mul", "Div"})
# ops through which integer model inputs become a float mask (no table lookups: a Gather
# of an embedding table is a real activation)
_MASK_OPS = frozenset({
    "Cast", "Sub", "Mul", "Add", "Div", "Neg", "Not", "Unsqueeze", "Squeeze", "Reshape", "Expand",
    "Where", "Equal", "Less", "Greater", "And", "Or", "Slice", "Transpose", "Tile", "Concat", "Min", "Max",
})
_INTEGER_TYPES = frozenset({
    onnx.TensorProto.INT64, onnx.TensorProto.INT32, onnx.TensorProto.INT16, onnx.TensorProto.INT8,
    onnx.TensorProto.UINT8, onnx.TensorProto.BOOL,
})
MASK_REASON = "computes an attention mask from integer model inputs only: never quantized"


@dataclass(frozen=True, slots=True)
class FusedOps:
    """The result: ops that join another op's kernel, and mask tensors.

    `joins[op]` is the op whose kernel `op` runs in; `internal` are tensors inside a kernel
    (no quantizer); `masks` are mask tensors (no quantizer, no range); `reasons[op]` says
    why a mask op stays in float.
    """

    joins: Mapping[str, str]
    internal: frozenset[str]
    masks: frozenset[str]
    reasons: Mapping[str, str]


def fused_ops(graph: DataflowGraph, profile: HwProfile, is_quantized: Callable[[onnx.NodeProto], bool]) -> FusedOps:
    """Analyse `graph`: epilogues, masks and masked softmaxes (see the module docstring).

    `is_quantized(node)` says whether the profile runs `node` quantized on its own.
    """
    masks = mask_tensors(graph)
    joins: dict[str, str] = {}
    internal: set[str] = set()
    reasons: dict[str, str] = {}
    for name in graph.order:
        node = graph.nodes[name]
        if node.output and all(t in masks for t in node.output):
            if node.op_type not in profile.passthrough_ops:
                reasons[name] = MASK_REASON
            continue
        mask = next((t for t in node.input if t in masks), None)
        if mask is not None:
            softmax = _sole_consumer(graph, node.output[0])
            if softmax is not None and softmax.op_type == "Softmax" and is_quantized(softmax):
                joins[name] = softmax.name
                internal.add(node.output[0])
            else:
                reasons[name] = f"adds the attention mask {mask!r} (from model inputs only): runs in float"
            continue
        epilogue = _epilogue_of(graph, node, joins, is_quantized)
        if epilogue is not None:
            joins[name], produced = epilogue
            internal.add(produced)
    return FusedOps(MappingProxyType(joins), frozenset(internal), masks, MappingProxyType(reasons))


def mask_tensors(graph: DataflowGraph) -> frozenset[str]:
    """Float tensors computed only from integer/boolean graph inputs and constants."""
    derived = {t for t in graph.graph_inputs if graph.elem_types.get(t) in _INTEGER_TYPES}
    for name in graph.order:
        node = graph.nodes[name]
        inputs = [t for t in node.input if t and not graph.is_constant(t)]
        if node.op_type in _MASK_OPS and inputs and all(t in derived for t in inputs):
            derived.update(node.output)
    return frozenset(t for t in derived if graph.is_float(t))


def _epilogue_of(
    graph: DataflowGraph, node: onnx.NodeProto, joins: Mapping[str, str], is_quantized: Callable[[onnx.NodeProto], bool]
) -> tuple[str, str] | None:
    """(the kernel op `node` is an epilogue of (rule 1), the tensor it reads from it), or None."""
    if node.op_type not in _BIAS_OPS | _SCALE_OPS or len(node.input) != 2:
        return None
    produced = _produced_input(graph, node)
    if produced is None or _sole_consumer(graph, produced) is not node or produced in graph.graph_outputs:
        return None
    constant = node.input[1] if node.input[0] == produced else node.input[0]
    if node.op_type in _SCALE_OPS and constant != node.input[1]:
        return None  # c / x is not a scaling
    producer = graph.producer(produced)
    if producer is None:
        return None
    kernel = joins.get(producer.name) if producer.op_type not in KERNEL_OPS else producer.name
    if kernel is None or not is_quantized(graph.nodes[kernel]):
        return None
    if not _is_channel_constant(graph, constant, produced, scalar_only=node.op_type in _SCALE_OPS):
        return None
    return kernel, produced


def _produced_input(graph: DataflowGraph, node: onnx.NodeProto) -> str | None:
    """The one non-constant input of a binary op with one constant input, else None."""
    variable = [t for t in node.input if t and not graph.is_constant(t)]
    constant = [t for t in node.input if t and graph.is_constant(t)]
    if len(variable) != 1 or len(constant) != 1 or graph.producer(variable[0]) is None:
        return None
    return str(variable[0])


def _is_channel_constant(graph: DataflowGraph, constant: str, tensor: str, *, scalar_only: bool) -> bool:
    """A scalar, or (unless `scalar_only`) one value per channel: a single non-unit axis of the
    constant that lines up (right-aligned broadcasting) with an axis of `tensor` of that size."""
    value = graph.constant(constant)
    if value.size == 1:
        return True
    shape = graph.shapes.get(tensor)
    if scalar_only or not shape or value.ndim > len(shape):
        return False
    wide = [axis for axis, dim in enumerate(value.shape) if dim != 1]
    aligned = len(shape) - value.ndim + wide[0]
    return len(wide) == 1 and shape[aligned] == value.shape[wide[0]]


def _sole_consumer(graph: DataflowGraph, tensor: str) -> onnx.NodeProto | None:
    consumers = graph.consumers(tensor)
    return consumers[0] if len(consumers) == 1 and tensor not in graph.graph_outputs else None
