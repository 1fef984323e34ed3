"""Fold BatchNormalization into the Conv or Gemm that feeds it.

Why: the device runs the folded kernel, so quantizers must see folded weights; an
unfolded BN would sit between a Conv and its activation quantizer and distort both the
weight ranges and the sensitivity list.

A large model (`model_io.is_large`) goes to graphsurgeon as a weightless copy whose
constants read the caller's weights only where a fold needs them; the result gets the
weights back once (`model_io.restore_weights`), never a graphsurgeon copy of each.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxmp import model_io
from onnxmp.encodings import PROVENANCE_PREFIX
from onnxmp.graph import all_names, unique_name
from onnxmp.passes.canonicalize import export_graph, import_graph

logger = logging.getLogger(__name__)

_FOLDABLE = {"Conv", "Gemm"}


def fold_batchnorm(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return a copy of `model` with every foldable producer->BatchNormalization pair folded.

    A pair is folded when:
    1. the producer is Conv or Gemm (alpha = beta = 1) and its output feeds only the BN;
    2. producer weight/bias and all BN parameters are constants;
    3. the BN is in inference mode (one output).
    Other BNs are kept; each is logged at DEBUG with the reason.
    """
    weights = model_io.weights(model) if model_io.is_large(model) else []
    graph, stubs = import_graph(model, weights)  # a large model's weights are read only when folded
    taken = all_names(model)
    provenance: dict[str, str] = {}
    folded = 0
    for bn in [n for n in graph.nodes if n.op == "BatchNormalization"]:
        reason = _why_not_foldable(bn, graph)
        if reason is not None:
            logger.debug("keep %s: %s", bn.name, reason)
            continue
        provenance.update(_fold(bn, taken))
        folded += 1
    logger.info("fold_batchnorm: folded %d BatchNormalization nodes", folded)
    result = export_graph(graph.cleanup().toposort(), model, stubs)
    for init in result.graph.initializer:
        if init.name in provenance:  # so encodings can name the user's tensor
            init.doc_string = f"{PROVENANCE_PREFIX}{provenance[init.name]}"
    return model_io.restore_weights(result, weights)


def _why_not_foldable(bn: gs.Node, graph: gs.Graph) -> str | None:
    if len([o for o in bn.outputs if o.name]) != 1:
        return "training-mode BatchNormalization (several outputs)"
    if not all(isinstance(t, gs.Constant) for t in bn.inputs[1:]):
        return "BN parameters are not constants"
    if not bn.inputs[0].inputs:
        return "BN input is a graph input"
    producer = bn.inputs[0].inputs[0]
    if producer.op not in _FOLDABLE:
        return f"producer {producer.name} is {producer.op}, not Conv or Gemm"
    if len(bn.inputs[0].outputs) != 1 or any(t.name == bn.inputs[0].name for t in graph.outputs):
        return f"output of {producer.name} has consumers besides the BN"
    if not all(isinstance(t, gs.Constant) for t in producer.inputs[1:]):
        return f"weights of {producer.name} are not constants"
    if producer.op == "Gemm" and (
        producer.attrs.get("alpha", 1.0) != 1.0 or producer.attrs.get("beta", 1.0) != 1.0
        or producer.attrs.get("transA", 0)
    ):
        return f"Gemm {producer.name} has alpha/beta != 1 or transA"
    return None


def _fold(bn: gs.Node, taken: set[str]) -> dict[str, str]:
    """Fold `bn` into its producer; return {new weight name: the weight it replaces}."""
    producer = bn.inputs[0].inputs[0]
    gamma, beta, mean, var = (t.values.astype(np.float64) for t in bn.inputs[1:5])
    factor = gamma / np.sqrt(var + bn.attrs.get("epsilon", 1e-5))
    weight = producer.inputs[1].values.astype(np.float64)
    # output channels: Conv weight axis 0; Gemm B axis 0 when transposed, else 1
    axis = 1 if producer.op == "Gemm" and not producer.attrs.get("transB", 0) else 0
    shape = [1] * weight.ndim
    shape[axis] = -1
    new_weight = (weight * factor.reshape(shape)).astype(np.float32)
    bias = producer.inputs[2].values.astype(np.float64) if len(producer.inputs) > 2 else 0.0
    new_bias = ((bias - mean) * factor + beta).astype(np.float32)
    original = producer.inputs[1].name
    producer.inputs[1] = gs.Constant(unique_name(taken, f"{original}_bnfold"), new_weight)
    bias_const = gs.Constant(unique_name(taken, f"{producer.name}_bias_bnfold"), new_bias)
    # the folded bias stands for the producer's bias, or for the BN's B when there was none
    bias_origin = producer.inputs[2].name if len(producer.inputs) > 2 else bn.inputs[2].name
    if len(producer.inputs) > 2:
        producer.inputs[2] = bias_const
    else:
        producer.inputs.append(bias_const)
    producer.outputs = bn.outputs
    bn.outputs = []
    return {producer.inputs[1].name: original, bias_const.name: bias_origin}
