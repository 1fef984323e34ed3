"""Canonicalization passes: name nodes, upgrade the opset, infer shapes, fold constants.

Why: later stages index the graph by node name, emit opset-21 QDQ (int4/int16 types), read
weights as initializers and need every tensor's dtype; exporters leave weights in Constant
nodes and shape arithmetic (TF-"same" padding chains feeding Pad) that must fold away so
Pad/Reshape see constants and quantizers see the true dataflow.

Large models (`large_model.is_large` under the keyword `limits`) go to the version converter,
shape inference and graphsurgeon as weightless copies, so no pass serializes the weights (impossible over 2 GB)
or holds them more than twice (input and result).
"""

from __future__ import annotations

import logging

import onnx
import onnx_graphsurgeon as gs
from onnx import shape_inference, version_converter
from onnx_graphsurgeon.ir.tensor import LazyValues

from onnxmp import large_model
from onnxmp.errors import PassError
from onnxmp.graph import all_names, unique_name
from onnxmp.large_model import SizeLimits
from onnxmp.passes.fix_legacy_ops import fix_legacy_ops

logger = logging.getLogger(__name__)

TARGET_OPSET = 21


def name_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return a copy where every node has a unique, non-empty name.

    Rule cases: unnamed nodes get `<op_type>_<k>`; a name used twice keeps its first
    use and later uses get a numeric suffix. Names are assigned in graph order.
    """
    result = onnx.ModelProto()
    result.CopyFrom(model)
    return name_new_nodes(result)


def name_new_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` (a copy the caller owns) with its nodes named as `name_nodes` names them, in place.

    Every pass that can add nodes (the version converter's adapters, graphsurgeon's folding)
    ends with it, so the graph index never meets an unnamed node whatever the pass order.
    """
    taken = {n.name for n in model.graph.node if n.name} | all_names(model)
    seen: set[str] = set()
    for node in model.graph.node:
        if not node.name or node.name in seen:
            node.name = unique_name(taken, node.name or node.op_type)
        seen.add(node.name)
    return model


def upgrade_opset(model: onnx.ModelProto, *, limits: SizeLimits | None = None) -> onnx.ModelProto:
    """Return a copy at opset 21 (the first with int4/uint4 and int16 QuantizeLinear).

    Models already at 21 or above are returned as an unchanged copy. Ops whose meaning
    changed in ways the converter misses are rewritten first (`fix_legacy_ops`).
    """
    current = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if current >= TARGET_OPSET:
        result = onnx.ModelProto()
        result.CopyFrom(model)
        return result
    model = fix_legacy_ops(model)  # semantics the converter's adapters do not carry over
    weights = large_model.large_weights(model, limits=limits)
    try:
        converted = version_converter.convert_version(_private_copy(model, weights), TARGET_OPSET)
    except Exception as e:  # the converter raises bare RuntimeError/ValidationError
        raise PassError(f"upgrade_opset: cannot convert opset {current} to {TARGET_OPSET}: {e}") from e
    if converted.ir_version < 10:
        converted.ir_version = 10
    return name_new_nodes(large_model.restore_weights(converted, weights))


def infer_shapes(model: onnx.ModelProto, *, limits: SizeLimits | None = None) -> onnx.ModelProto:
    """Return a copy with dtypes and shapes of every tensor (symbolic dims kept symbolic)."""
    result = onnx.ModelProto()
    result.CopyFrom(model)
    return _with_inferred_shapes(result, limits)


def _with_inferred_shapes(model: onnx.ModelProto, limits: SizeLimits | None) -> onnx.ModelProto:
    """`model` (a copy the caller owns, edited in place when large) with shapes inferred.

    A large model's weightless copy goes to shape inference; its inferred value_info, graph
    outputs and nodes (subgraphs carry value_info too) are copied back.
    """
    del model.graph.value_info[:]
    if not large_model.is_large(model, limits=limits):
        return shape_inference.infer_shapes(model, data_prop=True)
    weightless = large_model.weightless(model, large_model.weights(model, limits=limits))
    inferred = shape_inference.infer_shapes(weightless, data_prop=True)
    for name in ("node", "value_info", "output"):
        field = getattr(model.graph, name)
        del field[:]
        field.extend(getattr(inferred.graph, name))
    return model


def fold_constants(model: onnx.ModelProto, *, limits: SizeLimits | None = None) -> onnx.ModelProto:
    """Return a copy with constant subgraphs evaluated and Constant nodes turned into initializers.

    Rule cases: a node whose inputs are all constants is evaluated (with ONNX Runtime,
    through onnx-graphsurgeon) and replaced by its value; Shape of a tensor with a known
    static shape folds too; nodes left without consumers are removed.
    """
    weights = large_model.large_weights(model, limits=limits)
    graph, stubs = import_graph(model, weights)
    before = len(graph.nodes)
    graph.fold_constants(fold_shapes=True, error_ok=False).cleanup().toposort()
    result = export_graph(graph, model, stubs)
    logger.debug("fold_constants: %d -> %d nodes", before, len(result.graph.node))
    return name_new_nodes(large_model.restore_weights(_with_inferred_shapes(result, limits), weights))


def import_graph(
    model: onnx.ModelProto, weights: list[onnx.TensorProto]
) -> tuple[gs.Graph, dict[str, onnx.TensorProto]]:
    """A graphsurgeon graph of a copy of `model`, weightless when `weights` are given.

    The graph's constants named in `weights` read those protos (the caller's, loaded only
    when a pass asks for their values). Also returns the copy's stubs by name, for `export_graph`.
    """
    copy = _private_copy(model, weights)  # graphsurgeon names the Constant nodes it imports
    graph = gs.import_onnx(copy)
    _set_values(graph, {t.name: t for t in weights})
    return graph, {t.name: t for t in copy.graph.initializer if large_model.is_stub(t)}


def export_graph(graph: gs.Graph, model: onnx.ModelProto, stubs: dict[str, onnx.TensorProto]) -> onnx.ModelProto:
    """Export `graph` (from `import_graph`) with `model`'s IR version and opsets.

    Constants still reading the caller's weights export as their `stubs` (graphsurgeon
    would copy each weight twice): the result is weightless until `large_model.restore_weights`.
    """
    _set_values(graph, stubs)
    result: onnx.ModelProto = gs.export_onnx(graph, do_type_check=False)
    result.ir_version = model.ir_version
    del result.opset_import[:]
    result.opset_import.extend(model.opset_import)
    return result


def _set_values(graph: gs.Graph, tensors: dict[str, onnx.TensorProto]) -> None:
    """Point the graph's constants named in `tensors` at those protos (read only when needed)."""
    for name, constant in graph.tensors().items():
        if name in tensors:
            constant.values, constant.data_location = LazyValues(tensors[name]), None


def _private_copy(model: onnx.ModelProto, weights: list[onnx.TensorProto]) -> onnx.ModelProto:
    """A copy of `model` to hand to C++ or graphsurgeon: weightless when `weights` are given."""
    if weights:
        return large_model.weightless(model, weights)
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy
