"""Latency of a plan on a systolic accelerator: the model's layers, their operand widths, the sum.

Why: the search needs `latency_ms(plan)` for thousands of plans; a layer's cycles depend
only on its shape and its three operand widths, so each (layer, widths) is computed once
(and, for SCALE-Sim, kept in the store so a rerun pays nothing). Latency is not additive
over groups: a layer writes its output at the width of the group that reads it, so moving
one group changes the memory time of the layers that feed it (AMED's point).

Rule cases:
1. A layer is a Conv, ConvTranspose, Gemm or MatMul of a quantizer group; elementwise ops,
   pooling and ops left in float are not costed (as in BOPs and in SCALE-Sim).
2. ifmap and filter widths are the group's candidate (a_bits, w_bits; both operands at
   a_bits for an activation x activation MatMul); the ofmap width is the a_bits of the group
   whose quantizer sits on the output (after a fused Relu/Clip), or 32 (float) if none.
3. Total latency = sum over layers of max(compute, memory) (AMED's definition), batch 1.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from onnxmp.graph import DataflowGraph
from onnxmp.latency_spec import SystolicSpec
from onnxmp.records import GroupAnalysis, Plan
from onnxmp.store import ResultStore
from onnxmp.systolic import FLOAT_BITS, GemmShape, LayerCycles, OperandBits, layer_cycles, seconds

STORE_KIND = "systolic_layer"
_FUSED = frozenset({"Relu", "Clip"})


@dataclass(frozen=True)
class Layer:
    """One costed op: its GEMM shape, the group that sets its inputs, the group that reads its output."""

    op: str
    group: str
    out_group: str | None
    weighted: bool
    shape: GemmShape


def layers_of(graph: DataflowGraph, analysis: GroupAnalysis) -> tuple[Layer, ...]:
    """The costed layers of a model, in graph order; `graph` has concrete shapes (batch 1)."""
    reader = {t: g.id for g in analysis.groups for t in g.activations}
    layers = []
    for group in analysis.groups:
        for op in group.ops:
            shape = gemm_shape(graph, op)
            if shape is None:
                continue
            node = graph.nodes[op]
            weighted = any(graph.is_constant(t) for t in node.input[:2])
            layers.append(Layer(op, group.id, reader.get(_quantized_output(graph, op)), weighted, shape))
    return tuple(sorted(layers, key=lambda layer: graph.index(layer.op)))


def _quantized_output(graph: DataflowGraph, op: str) -> str:
    tensor = graph.nodes[op].output[0]
    while True:
        consumers = graph.consumers(tensor)
        if len(consumers) != 1 or consumers[0].op_type not in _FUSED:
            return tensor
        tensor = consumers[0].output[0]


def gemm_shape(graph: DataflowGraph, op: str) -> GemmShape | None:
    """The GEMM view of a Conv/ConvTranspose/Gemm/MatMul (None for other ops or unknown shapes)."""
    node = graph.nodes[op]
    if node.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
        return None
    shapes = [graph.shapes.get(t) for t in (node.input[0], node.input[1], node.output[0])]
    if any(s is None or not all(isinstance(d, int) and d > 0 for d in s) for s in shapes):
        return None
    a, b, out = shapes
    elems = (math.prod(a), math.prod(b), math.prod(out))
    if node.op_type == "Conv":
        m, n, k = math.prod(out[2:]), out[1], math.prod(b[1:])
    elif node.op_type == "ConvTranspose":
        m, n, k = math.prod(a[2:]), math.prod(b[1:]), a[1]
    elif node.op_type == "Gemm":  # a is [M, K] or, transposed, [K, M]
        m, n, k = out[0], out[1], elems[0] // out[0]
    else:  # MatMul, batched and broadcast: every output row is one GEMM row
        m, n, k = math.prod(out[:-1]), out[-1], a[-1]
    return GemmShape(m, n, k, *elems)


def operand_bits(layer: Layer, plan: Plan) -> OperandBits:
    """Rule 2: the widths `plan` gives the layer's operands."""
    own = plan[layer.group]
    filter_bits = own.w_bits if layer.weighted and own.w_bits is not None else own.a_bits
    ofmap = plan[layer.out_group].a_bits if layer.out_group is not None else FLOAT_BITS
    return OperandBits(own.a_bits, filter_bits, ofmap)


CycleFunction = Callable[[GemmShape, OperandBits, SystolicSpec], LayerCycles]


@dataclass
class SystolicLatency:
    """`latency_ms(plan)` over the layers of one model, each (layer, widths) computed once.

    `store` (optional) keeps every computed layer result under the store's key (model and
    profile fingerprints), so SCALE-Sim runs are paid once across runs.
    """

    layers: tuple[Layer, ...]
    spec: SystolicSpec
    store: ResultStore | None = None
    cycles_of: CycleFunction = layer_cycles
    _cache: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.store is not None:
            for e in self.store.entries(STORE_KIND):
                key = (e["op"], e["ifmap"], e["filter"], e["ofmap"])
                self._cache[key] = LayerCycles(e["compute"], e["ifmap_cycles"], e["filter_cycles"], e["ofmap_cycles"])

    def layer(self, layer: Layer, bits: OperandBits) -> LayerCycles:
        key = (layer.op, bits.ifmap, bits.filter, bits.ofmap)
        if key not in self._cache:
            result = self.cycles_of(layer.shape, bits, self.spec)
            self._cache[key] = result
            if self.store is not None:
                self.store.append(STORE_KIND, {
                    "op": layer.op, "ifmap": bits.ifmap, "filter": bits.filter, "ofmap": bits.ofmap,
                    "compute": result.compute, "ifmap_cycles": result.ifmap,
                    "filter_cycles": result.filter, "ofmap_cycles": result.ofmap,
                })
        return self._cache[key]

    def per_layer_ms(self, plan: Plan) -> dict[str, float]:
        return {
            layer.op: 1000 * seconds(self.layer(layer, operand_bits(layer, plan)).cycles, self.spec)
            for layer in self.layers
        }

    def latency_ms(self, plan: Plan) -> float:
        """Rule 3: sum over layers of max(compute, memory), in milliseconds."""
        cycles = sum(self.layer(layer, operand_bits(layer, plan)).cycles for layer in self.layers)
        return 1000 * seconds(cycles, self.spec)

