"""Shapes of tensors as ONNX Runtime computes them, for MACs shape inference cannot give.

Why: MACs (and so BOPs, the search's cost) come from inferred shapes; shape inference loses
them behind If/Loop outputs, data-dependent Reshapes and custom ops, and a weight op with
unknown shapes would cost 0 BOPs: the search would then quantize it for free. Running the
model once on one calibration run's feeds gives the true shapes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from types import MappingProxyType

import numpy as np
import onnx

from onnxmp import bops, runtime
from onnxmp.graph import DataflowGraph
from onnxmp.passes.quantizer_groups import WEIGHT_OPS
from onnxmp.records import GroupAnalysis


def unknown_mac_ops(graph: DataflowGraph, analysis: GroupAnalysis, macs: Mapping[str, int]) -> list[str]:
    """Quantized Conv/ConvTranspose/Gemm/MatMul ops whose MACs are unknown, in graph order."""
    ops = {op for group in analysis.groups for op in group.ops if graph.op_type(op) in WEIGHT_OPS}
    return sorted((op for op in ops if op not in macs), key=graph.index)


def observed_shapes(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray], tensors: Iterable[str]) -> dict[str, tuple[int, ...]]:
    """The shapes `tensors` take when `model` runs on `feeds` (one ONNX Runtime run)."""
    names = list(dict.fromkeys(tensors))
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    outputs = {o.name for o in exposed.graph.output}
    exposed.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in names if n not in outputs)
    sess = runtime.session(exposed)
    return {name: tuple(int(d) for d in value.shape) for name, value in zip(names, sess.run(names, dict(feeds)), strict=True)}


def macs_with_observed_shapes(
    model: onnx.ModelProto, graph: DataflowGraph, ops: Iterable[str], feeds: Mapping[str, np.ndarray]
) -> dict[str, int]:
    """MACs of `ops` from the shapes of their inputs and outputs on `feeds` (`graph` indexes `model`)."""
    ops = list(ops)
    tensors = [t for op in ops for t in (*graph.nodes[op].input[:2], graph.nodes[op].output[0]) if t and not graph.is_constant(t)]
    shapes = {**graph.shapes, **observed_shapes(model, feeds, tensors)}
    observed = bops.macs_per_op(_with_shapes(graph, shapes))
    return {op: observed[op] for op in ops if op in observed}


def _with_shapes(graph: DataflowGraph, shapes: Mapping[str, tuple[int | str | None, ...]]) -> DataflowGraph:
    return replace(graph, shapes=MappingProxyType(dict(shapes)))
