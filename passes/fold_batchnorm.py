"""Fold BatchNormalization into the Conv or Gemm that feeds it.

Why: the device runs the folded kernel, so quantizers must see folded weights; an
unfolded BN would sit between a Conv and its activation quantizer and distort both the
weight ranges and the sensitivity list.

A large model (`large_model.is_large` under `limits`) goes to graphsurgeon as a weightless copy whose
constants read the caller's weights only where a fold needs them; the result gets the
weights back once (`large_model.restore_weights`), never a graphsurgeon copy of each.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxmp import large_model
from onnxmp.encodings import PROVENANCE_PREFIX
from onnxmp.graph import DataflowGraph, all_names, attributes, output_channel_axis, unique_name
from onnxmp.passes.canonicalize import export_graph, import_graph, name_new_nodes
from onnxmp.quant_math import broadcast_shape

logger = logging.getLogger(__name__)

_FOLDABLE = {"Conv", "Gemm"}


def fold_batchnorm(model: onnx.ModelProto, *, limits: large_model.SizeLimits | None = None) -> onnx.ModelProto:
    """Return a copy of `model` with every foldable producer->BatchNormalization pair folded.

    A pair is folded when:
    1. the producer is Conv or Gemm (alpha = beta = 1) and its output feeds only the BN;
    2. producer weight/bias and all BN parameters are constants;
    3. the BN is in inference mode (one output).
    Other BNs are kept; `quantizer_groups` reports each with the reason (`why_not_foldable`).
    """
    weights = large_model.large_weights(model, limits=limits)
    graph, stubs = import_graph(model, weights)  # a large model's weights are read only when folded
    taken = all_names(model)
    provenance: dict[str, str] = {}
    folded = 0
    for bn in [n for n in graph.nodes if n.op == "BatchNormalization"]:
        reason = why_not_foldable(_gs_site(bn, graph))
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
    return name_new_nodes(large_model.restore_weights(result, weights))


@dataclass(frozen=True)
class BnSite:
    """What decides whether a BatchNormalization folds, read from either graph form."""

    outputs: int  # named outputs of the BN (inference mode has one)
    constant_params: bool  # scale, B, mean and var are constants
    producer: str | None  # the node computing the BN input, None for a graph input
    producer_op: str = ""
    producer_attrs: Mapping[str, object] = field(default_factory=dict)
    sole_consumer: bool = True  # the BN is the only reader of the producer's output
    constant_weights: bool = True  # the producer's weight and bias are constants


def why_not_foldable(site: BnSite) -> str | None:
    """The reason a BatchNormalization stays unfolded, None when it folds (see `fold_batchnorm`)."""
    if site.outputs != 1:
        return "training-mode BatchNormalization (several outputs)"
    if not site.constant_params:
        return "BN parameters are not constants"
    if site.producer is None:
        return "BN input is a graph input"
    if site.producer_op not in _FOLDABLE:
        return f"producer {site.producer} is {site.producer_op}, not Conv or Gemm"
    if not site.sole_consumer:
        return f"output of {site.producer} has consumers besides the BN"
    if not site.constant_weights:
        return f"weights of {site.producer} are not constants"
    attrs = site.producer_attrs
    if site.producer_op == "Gemm" and (
        attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0 or attrs.get("transA", 0)
    ):
        return f"Gemm {site.producer} has alpha/beta != 1 or transA"
    return None


def bn_site(graph: DataflowGraph, bn: onnx.NodeProto) -> BnSite:
    """The `BnSite` of node `bn` of an indexed model (how `quantizer_groups` asks)."""
    producer = graph.producer(bn.input[0])
    return BnSite(
        outputs=len([o for o in bn.output if o]),
        constant_params=all(graph.is_constant(t) for t in bn.input[1:]),
        producer=None if producer is None else producer.name,
        producer_op="" if producer is None else producer.op_type,
        producer_attrs={} if producer is None else attributes(producer),
        sole_consumer=len(graph.consumers(bn.input[0])) == 1 and bn.input[0] not in graph.graph_outputs,
        constant_weights=producer is None or all(graph.is_constant(t) for t in producer.input[1:] if t),
    )


def _gs_site(bn: gs.Node, graph: gs.Graph) -> BnSite:
    """The `BnSite` of `bn` in graphsurgeon's graph, as folding leaves it so far."""
    producer = bn.inputs[0].inputs[0] if bn.inputs[0].inputs else None
    return BnSite(
        outputs=len([o for o in bn.outputs if o.name]),
        constant_params=all(isinstance(t, gs.Constant) for t in bn.inputs[1:]),
        producer=None if producer is None else producer.name,
        producer_op="" if producer is None else producer.op,
        producer_attrs={} if producer is None else producer.attrs,
        sole_consumer=len(bn.inputs[0].outputs) == 1 and all(t.name != bn.inputs[0].name for t in graph.outputs),
        constant_weights=producer is None or all(isinstance(t, gs.Constant) for t in producer.inputs[1:]),
    )


def _fold(bn: gs.Node, taken: set[str]) -> dict[str, str]:
    """Fold `bn` into its producer; return {new weight name: the weight it replaces}."""
    producer = bn.inputs[0].inputs[0]
    gamma, beta, mean, var = (t.values.astype(np.float64) for t in bn.inputs[1:5])
    factor = gamma / np.sqrt(var + bn.attrs.get("epsilon", 1e-5))
    weight = producer.inputs[1].values.astype(np.float64)
    axis = output_channel_axis(producer.op, 1, weight.ndim, producer.attrs)
    new_weight = (weight * factor.reshape(broadcast_shape(weight.ndim, axis))).astype(np.float32)
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
