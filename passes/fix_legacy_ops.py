"""Rewrite ops whose meaning changed across opsets in ways the version converter misses.

Why: `upgrade_opset` hands the model to onnx's version converter, whose adapters keep some
ops unchanged although their semantics moved. Known gap: PRelu before opset 7 applies a
[C] slope per channel (axis 1, Caffe style); from opset 7 the same [C] slope broadcasts
numpy-style against the *last* axis, so an upgraded [N,C,H,W] model either fails
(W != C) or silently computes something else (W == C).

Rule cases:
1. PRelu at opset < 7 whose slope is a constant of shape [C] (C > 1) on an input of rank
   r >= 3: the slope becomes [C, 1, ..., 1] (r - 2 ones), the opset-7 spelling.
2. Anything else is left alone (a scalar or [1] slope means the same in every opset).
"""

from __future__ import annotations

import logging

import onnx
from onnx import numpy_helper, shape_inference

logger = logging.getLogger(__name__)

PRELU_BROADCAST_OPSET = 7


def fix_legacy_ops(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with the legacy semantics above spelled for the current opsets.

    A copy when something changes; `model` itself (never edited) when nothing does, so
    large models without legacy ops are not copied.
    """
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset >= PRELU_BROADCAST_OPSET or not any(n.op_type == "PRelu" for n in model.graph.node):
        return model
    result = onnx.ModelProto()
    result.CopyFrom(model)
    ranks = _ranks(result)
    slopes = {init.name: init for init in result.graph.initializer}
    for node in result.graph.node:
        slope = slopes.get(node.input[1]) if node.op_type == "PRelu" else None
        rank = ranks.get(node.input[0])
        if slope is None or len(slope.dims) != 1 or slope.dims[0] <= 1 or rank is None or rank < 3:
            continue
        values = numpy_helper.to_array(slope).reshape(-1, *[1] * (rank - 2))
        slope.CopyFrom(numpy_helper.from_array(values, slope.name))
        for info in result.graph.input:  # before IR 4 the initializer is also a graph input
            if info.name == slope.name:
                info.type.tensor_type.shape.ClearField("dim")
                for d in values.shape:
                    info.type.tensor_type.shape.dim.add(dim_value=d)
        logger.info("fix_legacy_ops: PRelu %s: slope [%d] per channel becomes %s", node.name, len(values), list(values.shape))
    return result


def _ranks(model: onnx.ModelProto) -> dict[str, int]:
    """Rank of every tensor shape inference knows (the model's own opset)."""
    try:
        inferred = shape_inference.infer_shapes(model)
    except Exception:  # shape inference of old models may fail; ranks then stay unknown
        return {}
    infos = (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output)
    return {v.name: len(v.type.tensor_type.shape.dim) for v in infos if v.type.tensor_type.HasField("shape")}
