"""Canonicalization passes: name nodes, upgrade the opset, infer shapes, fold constants.

Why: later stages index the graph by node name, emit opset-21 QDQ (int4/int16 types), read
weights as initializers and need every tensor's dtype; exporters leave weights in Constant
nodes and shape arithmetic (TF-"same" padding chains feeding Pad) that must fold away so
Pad/Reshape see constants and quantizers see the true dataflow.
"""

from __future__ import annotations

import logging

import onnx
import onnx_graphsurgeon as gs
from onnx import shape_inference, version_converter

from onnxmp.errors import PassError
from onnxmp.graph import all_names, unique_name

logger = logging.getLogger(__name__)

TARGET_OPSET = 21


def name_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return a copy where every node has a unique, non-empty name.

    Rule cases: unnamed nodes get `<op_type>_<k>`; a name used twice keeps its first
    use and later uses get a numeric suffix. Names are assigned in graph order.
    """
    result = onnx.ModelProto()
    result.CopyFrom(model)
    taken = {n.name for n in result.graph.node if n.name} | all_names(result)
    seen: set[str] = set()
    for node in result.graph.node:
        if not node.name or node.name in seen:
            node.name = unique_name(taken, node.name or node.op_type)
        seen.add(node.name)
    return result


def upgrade_opset(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return a copy at opset 21 (the first with int4/uint4 and int16 QuantizeLinear).

    Models already at 21 or above are returned as an unchanged copy.
    """
    current = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    result = onnx.ModelProto()
    result.CopyFrom(model)
    if current >= TARGET_OPSET:
        return result
    try:
        converted = version_converter.convert_version(result, TARGET_OPSET)
    except Exception as e:  # the converter raises bare RuntimeError/ValidationError
        raise PassError(f"upgrade_opset: cannot convert opset {current} to {TARGET_OPSET}: {e}") from e
    if converted.ir_version < 10:
        converted.ir_version = 10
    return converted


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return a copy with dtypes and shapes of every tensor (symbolic dims kept symbolic)."""
    result = onnx.ModelProto()
    result.CopyFrom(model)
    del result.graph.value_info[:]
    return shape_inference.infer_shapes(result, data_prop=True)


def fold_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return a copy with constant subgraphs evaluated and Constant nodes turned into initializers.

    Rule cases: a node whose inputs are all constants is evaluated (with ONNX Runtime,
    through onnx-graphsurgeon) and replaced by its value; Shape of a tensor with a known
    static shape folds too; nodes left without consumers are removed.
    """
    copy = onnx.ModelProto()
    copy.CopyFrom(model)  # graphsurgeon writes names into the Constant nodes it imports
    graph = gs.import_onnx(copy)
    before = len(graph.nodes)
    graph.fold_constants(fold_shapes=True, error_ok=False).cleanup().toposort()
    result = gs.export_onnx(graph, do_type_check=False)
    result.ir_version = model.ir_version
    del result.opset_import[:]
    result.opset_import.extend(model.opset_import)
    logger.debug("fold_constants: %d -> %d nodes", before, len(result.graph.node))
    return infer_shapes(result)
