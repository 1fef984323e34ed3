"""Cut a model into the part a quantizer group affects (its suffix) and the float rest.

Why: quantizing group g changes nothing upstream of g's first quantized tensor, so phase 1
runs only the suffix of the network that g can affect, fed with float values of the cut
("frontier") tensors that are computed once and shared by every candidate of g, and walked
forward from group to group so the float prefix is computed once in all.

Rule cases:
1. The affected nodes of g are the consumers of g's weights and activations and all their
   descendants; the frontier is every non-constant tensor they read but do not produce.
2. A subgraph keeps the nodes in graph order, the initializers they read, and declares
   inputs/outputs with the dtypes and shapes the index knows (symbolic dims stay symbolic).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import networkx as nx
import onnx
from onnx import helper

from onnxmp.graph import DataflowGraph
from onnxmp.records import QuantizerGroup


def affected_nodes(graph: DataflowGraph, group: QuantizerGroup) -> set[str]:
    """Nodes whose outputs can change when `group` is quantized."""
    start = {c for tensor in (*group.weights, *group.activations) for c in graph.consumers_of.get(tensor, ())}
    affected = set(start)
    for node in start:
        affected |= nx.descendants(graph.digraph, node)
    return with_shape_producers(graph, affected)


def with_shape_producers(graph: DataflowGraph, nodes: set[str]) -> set[str]:
    """`nodes` plus the producers of the non-float tensors they read (shape arithmetic).

    Shape tensors depend on the batch size, so they are recomputed inside each run rather
    than cached across samples; only float activations cross a cut.
    """
    nodes = set(nodes)
    while True:
        extra = {
            graph.producer_of[t]
            for t in frontier(graph, nodes)
            if not graph.is_float(t) and t in graph.producer_of
        }
        if not extra - nodes:
            return nodes
        nodes |= extra


def frontier(graph: DataflowGraph, nodes: set[str]) -> tuple[str, ...]:
    """Non-constant tensors read by `nodes` and produced outside them, in a stable order."""
    produced = {t for n in nodes for t in graph.nodes[n].output}
    seen: dict[str, None] = {}
    for name in sorted(nodes, key=graph.index):
        for tensor in graph.reads(name):
            if tensor and tensor not in produced and not graph.is_constant(tensor):
                seen.setdefault(tensor)
    return tuple(seen)


def cut_before(graph: DataflowGraph, node: str) -> tuple[str, ...]:
    """The frontier of `node` and every node after it (graph order): all a walk must hold there."""
    first = graph.index(node)
    later = {name for name in graph.nodes if graph.index(name) >= first}
    return frontier(graph, with_shape_producers(graph, later))


def producing_nodes(graph: DataflowGraph, wanted: Iterable[str], available: set[str]) -> set[str]:
    """The nodes needed to compute `wanted` from the `available` tensors (and constants)."""
    nodes: set[str] = set()
    stack = [t for t in wanted if t not in available]
    while stack:
        producer = graph.producer_of.get(stack.pop())
        if producer is None or producer in nodes:
            continue
        nodes.add(producer)
        stack.extend(
            t for t in graph.reads(producer) if t and t not in available and not graph.is_constant(t)
        )
    return with_shape_producers(graph, nodes)


def subgraph(
    model: onnx.ModelProto, graph: DataflowGraph, nodes: set[str], inputs: Sequence[str], outputs: Sequence[str]
) -> onnx.ModelProto:
    """A standalone model of `nodes` reading `inputs` and producing `outputs`."""
    kept = [n for n in model.graph.node if n.name in nodes]
    read = {t for n in kept for t in graph.reads(n.name)}
    constants = [init for init in model.graph.initializer if init.name in read]
    constant_nodes = [
        n for n in model.graph.node if n.op_type == "Constant" and n.name not in nodes and n.output[0] in read
    ]
    new_graph = helper.make_graph(
        constant_nodes + kept,
        f"{model.graph.name}_part",
        [_value_info(graph, t) for t in inputs],
        [_value_info(graph, t) for t in outputs],
        initializer=constants,
    )
    result = helper.make_model(new_graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    return result


def _value_info(graph: DataflowGraph, tensor: str) -> onnx.ValueInfoProto:
    elem_type = graph.elem_types.get(tensor, onnx.TensorProto.FLOAT)
    shape = graph.shapes.get(tensor)
    return helper.make_tensor_value_info(tensor, elem_type, list(shape) if shape is not None else None)
