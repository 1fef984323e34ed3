"""Fuse the exported erf form of GELU into one Gelu op (opset 20).

Why: exporters write GELU as x * 0.5 * (1 + erf(x / sqrt 2)), five ops. A device runs it as
one activation kernel; five ops would become five quantizer groups (Div, Add, Mul, Mul with
A8/A16 candidates) and put quantizers inside the activation function. One Gelu op reads
one quantizer and is listed (or not) in a profile as one op type.

Rule cases (c = a constant scalar, the other operand of each op being the chain's tensor):
1. d = Div(x, c = sqrt 2) or Mul(x, c = 1/sqrt 2); e = Erf(d); a = Add(e, c = 1);
   then y = Mul(Mul(x, a), c = 0.5) or y = Mul(Mul(x, c = 0.5), a), in either operand order.
2. Every intermediate tensor has that one consumer and is not a graph output; y keeps its name.
Models below opset 20 are returned unchanged (Gelu does not exist there).
"""

from __future__ import annotations

import logging
import math

import numpy as np
import onnx
from onnx import helper

from onnxmp.graph import DataflowGraph, all_names, build, unique_name
from onnxmp.large_model import SizeLimits

logger = logging.getLogger(__name__)

GELU_OPSET = 20
_TOLERANCE = 1e-4


def fuse_gelu(model: onnx.ModelProto, *, limits: SizeLimits | None = None) -> onnx.ModelProto:
    """Return a copy of `model` with every erf-form GELU (rule cases above) replaced by Gelu.

    `limits` is accepted like every canonicalization pass takes it; this pass hands no model
    to C++ (it reads only scalar constants), so large models need no weightless copy.
    """
    del limits
    result = onnx.ModelProto()
    result.CopyFrom(model)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < GELU_OPSET:
        return result
    graph = build(model)
    taken = all_names(model)
    replaced: dict[str, onnx.NodeProto] = {}  # last node of a match -> its Gelu
    dropped: set[str] = set()
    for name in graph.order:
        if graph.op_type(name) != "Erf":
            continue
        match = _match(graph, graph.nodes[name])
        if match is None:
            continue
        x, nodes = match
        gelu_name = unique_name(taken, name[: -len("Erf")] + "Gelu" if name.endswith("Erf") else f"{name}_gelu")
        replaced[nodes[-1].name] = helper.make_node("Gelu", [x], [nodes[-1].output[0]], name=gelu_name)
        dropped.update(n.name for n in nodes)
    kept = [replaced.get(n.name, n) for n in result.graph.node if n.name not in dropped or n.name in replaced]
    del result.graph.node[:]
    result.graph.node.extend(kept)
    logger.info("fuse_gelu: %d GELU subgraphs fused", len(replaced))
    return result


def _match(graph: DataflowGraph, erf: onnx.NodeProto) -> tuple[str, list[onnx.NodeProto]] | None:
    """(x, the matched nodes in graph order ending with the one producing y), or None."""
    scale = graph.producer(erf.input[0])
    if scale is None or not _single_use(graph, scale.output[0]):
        return None
    x = _scalar_operand(graph, scale, {"Div": math.sqrt(2), "Mul": 1 / math.sqrt(2)})
    add = _sole_consumer(graph, erf.output[0])
    if x is None or add is None or _scalar_operand(graph, add, {"Add": 1.0}) != erf.output[0]:
        return None
    mul = _sole_consumer(graph, add.output[0])
    if mul is None or mul.op_type != "Mul":
        return None
    other = mul.input[1] if mul.input[0] == add.output[0] else mul.input[0]
    half = graph.producer(other)
    if other == x:  # y = Mul(Mul(x, a), 0.5)
        last = _sole_consumer(graph, mul.output[0])
        if last is None or _scalar_operand(graph, last, {"Mul": 0.5}) != mul.output[0]:
            return None
        return x, [scale, erf, add, mul, last]
    if half is not None and _single_use(graph, other) and _scalar_operand(graph, half, {"Mul": 0.5}) == x:
        return x, [scale, erf, add, half, mul]  # y = Mul(Mul(x, 0.5), a)
    return None


def _scalar_operand(graph: DataflowGraph, node: onnx.NodeProto, expected: dict[str, float]) -> str | None:
    """The variable operand of `node` when its other operand is the constant scalar `expected[op]`."""
    if node.op_type not in expected or len(node.input) != 2:
        return None
    for position, constant in enumerate(node.input):
        variable = node.input[1 - position]
        if node.op_type == "Div" and position == 0:
            continue  # c / x is no scaling of x
        if graph.is_constant(constant) and not graph.is_constant(variable):
            value = graph.constant(constant)
            if value.size == 1 and np.isclose(float(value.ravel()[0]), expected[node.op_type], rtol=_TOLERANCE):
                return str(variable)
    return None


def _sole_consumer(graph: DataflowGraph, tensor: str) -> onnx.NodeProto | None:
    consumers = graph.consumers(tensor)
    return consumers[0] if len(consumers) == 1 and _single_use(graph, tensor) else None


def _single_use(graph: DataflowGraph, tensor: str) -> bool:
    return len(graph.consumers(tensor)) == 1 and tensor not in graph.graph_outputs
