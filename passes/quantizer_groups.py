"""Quantizer groups (Pandey et al. 2023, §3.4): tensors that must share one candidate.

Why: an op computes in one precision, so the quantizers it reads are tied: a Conv's weight
and input form one kernel of the device; both inputs of an Add, all inputs of a Concat,
both operands of an activation x activation MatMul share one activation width. A group is
a connected component of the op-quantizer graph.

Rule cases:
1. A quantizer sits on every weight of a quantized op (constant operand of Conv,
   ConvTranspose, Gemm, MatMul) and on every float activation a quantized op reads.
2. An activation's quantizer is placed at its producer: data-movement ops (the profile's
   passthrough list, minus Relu/Clip) pass their input's quantizer through, so a Gemm after
   a Flatten reads the quantizer of the tensor before the Flatten. Relu/Clip are fused into
   the op before them: the quantizer sits on their output and the pre-activation tensor
   gets none.
3. Ops the profile does not list, non-nearest Resize, ops with no float inputs and groups
   no kernel fits stay in float, each with a reason.
4. Kernel shapes (`fused_ops`): a MatMul/Gemm/Conv's constant bias Add and constant scaling
   Mul/Div join its kernel (no quantizer between them); an additive attention mask never
   gets a quantizer, the ops computing it stay in float, and the Add of scores and mask
   joins a quantized Softmax (a masked-softmax kernel) or stays in float.
5. Op types with activation-only kernels in the profile (`op_kernels: {Softmax: [A16]}`)
   restrict the activation widths of their group; ops that joined a kernel restrict nothing.
6. With the profile's `schemes.embeddings`, the 2-D float constant tables that Gather ops
   read are quantized weight-only (`GroupAnalysis.tables`): no group, no BOPs.
"""

from __future__ import annotations

from types import MappingProxyType

import networkx as nx
import onnx

from onnxmp.graph import ATTR_MODE, DataflowGraph, get_attribute
from onnxmp.hw_profile import HwProfile
from onnxmp.passes.fold_batchnorm import bn_site, why_not_foldable
from onnxmp.passes.fused_ops import FusedOps, fused_ops
from onnxmp.records import Candidate, GroupAnalysis, QuantizerGroup, SkippedOp

WEIGHT_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
_WEIGHT_POSITIONS = {"Conv": (1,), "ConvTranspose": (1,), "Gemm": (0, 1), "MatMul": (0, 1)}
_ACTIVATION_FUSED = frozenset({"Relu", "Clip"})


def quantizer_groups(graph: DataflowGraph, profile: HwProfile) -> GroupAnalysis:
    """Derive the quantizer groups of `graph` under `profile`, and the ops left in float."""
    fused = fused_ops(graph, profile, lambda node: _why_not_quantized(graph, node, profile) is None)
    in_kernels = set(fused.joins) | set(fused.joins.values())
    skipped: list[SkippedOp] = []
    tie_graph = nx.Graph()
    anchors: dict[str, str] = {}
    for name in graph.order:
        node = graph.nodes[name]
        reason = fused.reasons.get(name) or _why_not_quantized(graph, node, profile)
        if name in fused.joins:
            tie_graph.add_edge(("op", name), ("op", fused.joins[name]))
        elif reason is not None:
            if reason:
                skipped.append(SkippedOp(name, node.op_type, reason))
            continue
        weights, activations = _operands(graph, node, fused)
        if not weights and not activations and name not in in_kernels:
            skipped.append(SkippedOp(name, node.op_type, "no float inputs to quantize"))
            continue
        tie_graph.add_node(("op", name))
        for weight in weights:
            tie_graph.add_edge(("op", name), ("w", weight))
        for tensor in activations:
            anchors[tensor] = anchor_of(graph, tensor, profile)
            tie_graph.add_edge(("op", name), ("a", anchors[tensor]))
    groups = []
    for component in nx.connected_components(tie_graph):
        group, reason = _make_group(graph, component, profile, fused)
        if group is not None:
            groups.append(group)
            continue
        skipped.extend(SkippedOp(op, graph.op_type(op), reason) for op in _sorted_ops(graph, component))
    groups.sort(key=lambda g: graph.index(g.ops[0]))
    skipped.sort(key=lambda s: graph.index(s.node))
    kept = {t for g in groups for t in g.activations}
    return GroupAnalysis(
        groups=tuple(groups),
        skipped=tuple(skipped),
        anchors=MappingProxyType({t: a for t, a in sorted(anchors.items()) if a in kept}),
        tables=_tables(graph, profile),
    )


def _tables(graph: DataflowGraph, profile: HwProfile) -> tuple[str, ...]:
    """Float constant tables that Gather ops read rows of, when the profile quantizes them."""
    if profile.embeddings is None:
        return ()
    found = [
        node.input[0] for node in (graph.nodes[n] for n in graph.order)
        if node.op_type == "Gather" and graph.is_constant(node.input[0]) and graph.is_float(node.input[0])
        and len(graph.shapes.get(node.input[0], ())) == 2
    ]
    return tuple(dict.fromkeys(found))


def _why_not_quantized(graph: DataflowGraph, node: onnx.NodeProto, profile: HwProfile) -> str | None:
    """None if `node` is quantized; "" if it passes quantizers through; else the reason."""
    op = node.op_type
    if op in profile.passthrough_ops:
        if op == "Resize" and get_attribute(node, ATTR_MODE, b"nearest") not in (b"nearest", "nearest"):
            return "Resize that interpolates is not data movement; runs in float"
        return ""
    if op not in profile.quantized_ops:
        unfolded = why_not_foldable(bn_site(graph, node)) if op == "BatchNormalization" else None
        if unfolded is not None:
            return f"BatchNormalization not folded ({unfolded}); runs in float on profile {profile.name}"
        return f"op type {op} runs in float on profile {profile.name}"
    if op in WEIGHT_OPS and op != "MatMul" and not graph.is_constant(node.input[1]):
        return f"{op} weight {node.input[1]!r} is not a constant"
    return None


def _operands(graph: DataflowGraph, node: onnx.NodeProto, fused: FusedOps) -> tuple[list[str], list[str]]:
    """(weight initializers, float activation inputs) that `node` reads; none inside a kernel."""
    weights, activations = [], []
    data_inputs = node.input[:2] if node.op_type in WEIGHT_OPS else node.input
    for position, tensor in enumerate(data_inputs):
        if not tensor or not graph.is_float(tensor) or tensor in fused.internal or tensor in fused.masks:
            continue
        if node.name in fused.joins and graph.is_constant(tensor):
            continue
        if graph.is_constant(tensor):
            if position in _WEIGHT_POSITIONS.get(node.op_type, ()):
                weights.append(tensor)
        elif tensor not in activations:
            activations.append(tensor)
    return weights, activations


def anchor_of(graph: DataflowGraph, tensor: str, profile: HwProfile) -> str:
    """The tensor whose quantizer `tensor` uses: walk up through data-movement ops."""
    while True:
        producer = graph.producer(tensor)
        if (
            producer is None
            or producer.op_type not in profile.passthrough_ops
            or producer.op_type in _ACTIVATION_FUSED
            or (producer.op_type == "Resize" and _why_not_quantized(graph, producer, profile))
            or not graph.is_float(producer.input[0])
            or graph.is_constant(producer.input[0])
        ):
            return tensor
        tensor = producer.input[0]


def _make_group(
    graph: DataflowGraph, component: set[tuple[str, str]], profile: HwProfile, fused: FusedOps
) -> tuple[QuantizerGroup | None, str]:
    ops = _sorted_ops(graph, component)
    first_use: dict[str, int] = {}
    for op in ops:
        for tensor in graph.nodes[op].input:
            first_use.setdefault(tensor, graph.index(op))
    weights = sorted((t for kind, t in component if kind == "w"), key=lambda t: (first_use[t], t))
    activations = sorted((t for kind, t in component if kind == "a"), key=lambda t: _position(graph, t))
    deciding = [graph.op_type(op) for op in ops if op not in fused.joins]
    candidates = _allowed(deciding, profile, has_weights=bool(weights))
    if not candidates:
        return None, "no kernel of the profile fits every op of its group"
    return QuantizerGroup(ops[0], tuple(weights), tuple(activations), tuple(ops), candidates), ""


def _allowed(op_types: list[str], profile: HwProfile, *, has_weights: bool) -> tuple[Candidate, ...]:
    """Kernels every op type allows; activation-only kernels (`A16`) restrict the widths only."""
    kernels = list(profile.kernels)
    widths: set[int] | None = None
    for op_type in op_types:
        allowed = profile.kernels_for(op_type)
        own = {k.a_bits for k in allowed}
        widths = own if widths is None else widths & own
        if any(k.w_bits is not None for k in allowed):
            kernels = [k for k in kernels if k in allowed]
    widths = {k.a_bits for k in kernels} if widths is None else widths
    if has_weights:
        return tuple(k for k in kernels if k.a_bits in widths)
    return tuple(Candidate(None, a) for a in sorted(widths, reverse=True))


def _sorted_ops(graph: DataflowGraph, component: set[tuple[str, str]]) -> list[str]:
    return sorted((name for kind, name in component if kind == "op"), key=graph.index)


def _position(graph: DataflowGraph, tensor: str) -> tuple[int, str]:
    """Graph inputs first, then tensors in the order of their producers."""
    producer = graph.producer_of.get(tensor)
    return (-1 if producer is None else graph.index(producer), tensor)
