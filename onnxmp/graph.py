"""A read-only dataflow index of an ONNX graph, built once with networkx.

Why: passes and analyses ask "who produces this tensor", "who consumes it", "is it a
constant", "what is its dtype/shape" many times; scanning `graph.node` for each question
is quadratic (qonnx's find_producer). The index is built once per model and never edited.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import networkx as nx
import numpy as np
import onnx
from onnx import numpy_helper

from onnxmp.errors import ModelError

# ONNX attribute keys and op types used across onnxmp live here only.
ATTR_GROUP = "group"
ATTR_TRANS_A = "transA"
ATTR_TRANS_B = "transB"
ATTR_AXIS = "axis"
ATTR_EPSILON = "epsilon"
ATTR_MODE = "mode"
ATTR_ALPHA = "alpha"
ATTR_BETA = "beta"
FLOAT_TYPES = frozenset({onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16})


@dataclass(frozen=True)
class DataflowGraph:
    """Index of one model: nodes by name, producers, consumers, constants, dtypes, shapes.

    `digraph` has one vertex per node name and an edge producer -> consumer for every
    tensor passed between them (edge attribute `tensors`).
    """

    digraph: nx.DiGraph
    nodes: Mapping[str, onnx.NodeProto]
    order: tuple[str, ...]  # node names in topological (graph) order
    producer_of: Mapping[str, str]
    consumers_of: Mapping[str, tuple[str, ...]]
    constants: Mapping[str, onnx.TensorProto]
    graph_inputs: tuple[str, ...]
    graph_outputs: tuple[str, ...]
    elem_types: Mapping[str, int]
    shapes: Mapping[str, tuple[int | str | None, ...]]
    positions: Mapping[str, int]
    # outer tensors each If/Loop/Scan node reads from inside its subgraphs (by node name)
    implicit_inputs: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: MappingProxyType({}))

    def producer(self, tensor: str) -> onnx.NodeProto | None:
        name = self.producer_of.get(tensor)
        return None if name is None else self.nodes[name]

    def consumers(self, tensor: str) -> tuple[onnx.NodeProto, ...]:
        return tuple(self.nodes[n] for n in self.consumers_of.get(tensor, ()))

    def op_type(self, node_name: str) -> str:
        return self.nodes[node_name].op_type

    def is_constant(self, tensor: str) -> bool:
        return tensor in self.constants

    def constant(self, tensor: str) -> np.ndarray:
        return numpy_helper.to_array(self.constants[tensor])

    def is_float(self, tensor: str) -> bool:
        return self.elem_types.get(tensor) in FLOAT_TYPES

    def reads(self, node_name: str) -> tuple[str, ...]:
        """Tensors the node reads: its inputs, then the outer tensors its subgraphs read."""
        return (*self.nodes[node_name].input, *self.implicit_inputs.get(node_name, ()))

    def index(self, node_name: str) -> int:
        """Position of a node in graph (topological) order."""
        return self.positions[node_name]


def build(model: onnx.ModelProto) -> DataflowGraph:
    """Index `model.graph` (top-level graph).

    Subgraphs of If/Loop/Scan are not indexed, but the outer tensors they read count as
    inputs of their node (`implicit_inputs`, edges and consumers), so a node that reads a
    tensor only inside a branch still depends on its producer.
    """
    graph = model.graph
    nodes = {node.name: node for node in graph.node}
    if len(nodes) != len(graph.node) or "" in nodes:
        raise ModelError(_unnamed_or_repeated(graph))
    producer_of: dict[str, str] = {}
    consumers_of: dict[str, list[str]] = {}
    implicit = {node.name: reads for node in graph.node if (reads := outer_reads(node))}
    for node in graph.node:
        for out in node.output:
            if out:
                producer_of[out] = node.name
        for inp in dict.fromkeys((*node.input, *implicit.get(node.name, ()))):
            if inp:
                consumers_of.setdefault(inp, []).append(node.name)
    constants = {init.name: init for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and not node.input:
            value = _constant_value(node)
            if value is not None:
                constants[node.output[0]] = value
    digraph = nx.DiGraph()
    digraph.add_nodes_from(nodes)
    for tensor, consumers in consumers_of.items():
        src = producer_of.get(tensor)
        for dst in consumers if src is not None else ():
            digraph.add_edge(src, dst)
            digraph.edges[src, dst].setdefault("tensors", []).append(tensor)
    initializer_names = {init.name for init in graph.initializer}
    elem_types, shapes = _value_infos(graph)
    return DataflowGraph(
        digraph=digraph,
        nodes=MappingProxyType(nodes),
        order=tuple(node.name for node in graph.node),
        producer_of=MappingProxyType(producer_of),
        consumers_of=MappingProxyType({k: tuple(v) for k, v in consumers_of.items()}),
        constants=MappingProxyType(constants),
        graph_inputs=tuple(i.name for i in graph.input if i.name not in initializer_names),
        graph_outputs=tuple(o.name for o in graph.output),
        elem_types=MappingProxyType(elem_types),
        shapes=MappingProxyType(shapes),
        positions=MappingProxyType({node.name: i for i, node in enumerate(graph.node)}),
        implicit_inputs=MappingProxyType(implicit),
    )


def _unnamed_or_repeated(graph: onnx.GraphProto) -> str:
    """Which node breaks the one-name-per-node rule (canonicalize.name_nodes makes it hold)."""
    seen: set[str] = set()
    for i, node in enumerate(graph.node):
        if not node.name:
            return f"node {i} ({node.op_type} -> {', '.join(node.output)}) has no name; run canonicalize.name_nodes"
        if node.name in seen:
            return f"node name {node.name!r} is used twice; run canonicalize.name_nodes"
        seen.add(node.name)
    return "nodes need unique non-empty names"


def outer_reads(node: onnx.NodeProto) -> tuple[str, ...]:
    """Tensors the subgraphs of `node` (If branches, Loop/Scan bodies) read from outside, in order."""
    found: dict[str, None] = {}
    for attr in node.attribute:
        for sub in (*([attr.g] if attr.HasField("g") else []), *attr.graphs):
            found.update(dict.fromkeys(_free_names(sub)))
    return tuple(found)


def _free_names(graph: onnx.GraphProto) -> list[str]:
    """Names read inside `graph` (nested subgraphs included) that `graph` does not define."""
    defined = {i.name for i in (*graph.input, *graph.initializer)}
    free: list[str] = []
    for node in graph.node:
        for name in (*node.input, *outer_reads(node)):
            if name and name not in defined:
                free.append(name)
        defined.update(node.output)
    return free


def _constant_value(node: onnx.NodeProto) -> onnx.TensorProto | None:
    for attr in node.attribute:
        if attr.name == "value":
            return attr.t
    return None


def _value_infos(graph: onnx.GraphProto) -> tuple[dict[str, int], dict[str, tuple]]:
    elem_types: dict[str, int] = {}
    shapes: dict[str, tuple] = {}
    for info in (*graph.input, *graph.value_info, *graph.output):
        tensor_type = info.type.tensor_type
        if not info.type.HasField("tensor_type"):
            continue
        elem_types[info.name] = tensor_type.elem_type
        if tensor_type.HasField("shape"):
            shapes[info.name] = tuple(
                d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                for d in tensor_type.shape.dim
            )
    for init in graph.initializer:
        elem_types[init.name] = init.data_type
        shapes[init.name] = tuple(init.dims)
    return elem_types, shapes


def unique_name(taken: set[str], base: str) -> str:
    """Return `base`, or `base_1`, `base_2`, ... whichever is not in `taken`; adds it to `taken`.

    >>> taken = {"x", "x_q"}
    >>> unique_name(taken, "x_q"), unique_name(taken, "y")
    ('x_q_1', 'y')
    """
    name, k = base, 0
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    taken.add(name)
    return name


def all_names(model: onnx.ModelProto) -> set[str]:
    """Every tensor and node name in the top-level graph (for `unique_name`)."""
    graph = model.graph
    names: set[str] = {n.name for n in graph.node}
    names.update(t for n in graph.node for t in (*n.input, *n.output))
    names.update(i.name for i in (*graph.input, *graph.output, *graph.initializer, *graph.value_info))
    return names


def output_channel_axis(op_type: str, position: int, rank: int, attrs: Mapping[str, object]) -> int | None:
    """The output-channel axis of a weight that is input `position` of an `op_type` node.

    None when the weight has no such axis that integer kernels take per channel: a grouped
    ConvTranspose, Gemm's A, a batched (rank > 2) MatMul weight (ONNX Runtime's integer
    MatMul takes per-column zero points only for 2-D weights), any other op.

    >>> output_channel_axis("Conv", 1, 4, {}), output_channel_axis("Gemm", 1, 2, {"transB": 0})
    (0, 1)
    >>> output_channel_axis("MatMul", 0, 2, {}), output_channel_axis("MatMul", 1, 3, {})
    (0, None)
    """
    if op_type == "Conv":
        return 0
    if op_type == "ConvTranspose":
        return 1 if attrs.get(ATTR_GROUP, 1) == 1 else None
    if op_type == "Gemm":
        if position == 0:
            return None
        return 0 if attrs.get(ATTR_TRANS_B, 0) else 1
    if op_type == "MatMul" and rank == 2:
        return 1 if position == 1 else 0
    return None


def attributes(node: onnx.NodeProto) -> dict[str, object]:
    """Every attribute of `node` by name, as Python values."""
    return {attr.name: onnx.helper.get_attribute_value(attr) for attr in node.attribute}


def get_attribute(node: onnx.NodeProto, name: str, default: object = None) -> object:
    """The value of attribute `name` of `node`, or `default`."""
    for attr in node.attribute:
        if attr.name == name:
            return onnx.helper.get_attribute_value(attr)
    return default
