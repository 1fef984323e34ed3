"""Empirical bias correction (Nagel et al. 2019): fold a layer's mean output error into its bias.

Why: rounding a weight tensor to 4 bits shifts the mean of each output channel
(E[W~x] != E[Wx]), and the shift passes through every later layer: a biased error that
no later layer averages away. Subtracting it from the bias per output channel removes it
at no cost on the device. The means come from the calibration rows `collect_grams` already
samples for AdaRound (`InputStats.mean_x`, `mean_f`), so it needs no forward pass of its own:
    b' = b - (W~ E[x_q] - W E[x_f])
with x_q the layer's inputs in the network quantized so far and x_f the float network's, or
(the default, measured in README "Bias correction and output-aware ranges") with the float
inputs only: b' = b - (W~ - W) E[x_f], the layer's own rounding error.

Rule cases (`why_not_correctable`):
1. Conv and ConvTranspose: the bias is input 2 (added, named `<weight>_bias`, when absent).
2. Gemm with alpha = beta = 1: the bias C has one value per output ([N] or [1, N]) or is
   added; a C of another shape (per row, scalar) is left alone.
3. MatMul has no bias input: left alone (the correction would need a new Add node).
4. A bias initializer that other nodes read too is copied, not changed under them.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
from onnx import numpy_helper

from onnxmp.graph import ATTR_ALPHA, ATTR_BETA, DataflowGraph, all_names, get_attribute, unique_name
from onnxmp.passes.collect_grams import InputStats
from onnxmp.passes.layer_inputs import LinearLayout, to_matrices
from onnxmp.records import GroupAnalysis, Plan

Biases = Mapping[tuple[str, int], np.ndarray]  # (weight, bits) -> the corrected bias of its layer, one per output


def why_not_correctable(graph: DataflowGraph, layout: LinearLayout) -> str | None:
    """Why the layer of `layout` keeps its bias uncorrected, None when it can be corrected."""
    node = graph.nodes[layout.node]
    if node.op_type == "MatMul":
        return f"MatMul {node.name} has no bias input"
    scaled = get_attribute(node, ATTR_ALPHA, 1.0) != 1.0 or get_attribute(node, ATTR_BETA, 1.0) != 1.0
    if node.op_type == "Gemm" and scaled:
        return f"Gemm {node.name} scales its product or bias (alpha, beta != 1)"
    bias = node.input[2] if len(node.input) > 2 else ""
    if bias and not graph.is_constant(bias):
        return f"{node.op_type} {node.name} has a computed bias"
    if bias and graph.constant(bias).size != _outputs(layout):
        return f"the bias of {node.op_type} {node.name} is not one value per output"
    return None


def layer_bias(graph: DataflowGraph, layout: LinearLayout) -> np.ndarray:
    """The layer's bias, one float64 value per output (zeros when it has none)."""
    node = graph.nodes[layout.node]
    if len(node.input) > 2 and node.input[2]:
        return np.asarray(graph.constant(node.input[2]), np.float64).reshape(-1)
    return np.zeros(_outputs(layout))


def corrected_bias(
    w: np.ndarray, w_q: np.ndarray, layout: LinearLayout, stats: InputStats, bias: np.ndarray, *, quantized: bool
) -> np.ndarray:
    """b - (W~ E[x_q] - W E[x_f]) per output channel (float32), `w_q` the dequantized weight W~;
    without `quantized`, b - (W~ - W) E[x_f] (the layer's own rounding error only).

    The matrices are [groups, out / groups, K]; outputs are numbered group by group, as
    Conv and ConvTranspose number their output channels.
    """
    mean_q = stats.mean_x if quantized else stats.mean_f
    rounded = np.matmul(to_matrices(w_q.astype(np.float64), layout), mean_q[:, :, None])
    original = np.matmul(to_matrices(w.astype(np.float64), layout), stats.mean_f[:, :, None])
    return np.asarray(bias - (rounded - original).reshape(-1), np.float32)


def _outputs(layout: LinearLayout) -> int:
    if layout.op_type == "Conv":
        return layout.shape[0]
    if layout.op_type == "ConvTranspose":
        return layout.shape[1] * layout.groups
    return layout.shape[1 if layout.trans else 0]  # Gemm / MatMul: [K, N] when `trans`


def with_biases(model: onnx.ModelProto, biases: Mapping[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of `model` in which the layer reading each weight of `biases` has that bias.

    An existing bias initializer keeps its name and shape (rule 4: a shared one is copied
    under a new name); a layer without one gets input 2 named `<weight>_bias`.
    """
    if not biases:
        return model
    result = onnx.ModelProto()
    result.CopyFrom(model)
    graph = result.graph
    initializers = {init.name: init for init in graph.initializer}
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    taken = all_names(result)
    for node in graph.node:
        if len(node.input) < 2 or node.input[1] not in biases:
            continue
        values = np.asarray(biases[node.input[1]], np.float32)
        old = node.input[2] if len(node.input) > 2 else ""
        if old and readers.get(old, 0) == 1:
            doc = initializers[old].doc_string
            initializers[old].CopyFrom(numpy_helper.from_array(values.reshape(initializers[old].dims), old))
            initializers[old].doc_string = doc
            continue
        name = unique_name(taken, f"{node.input[1]}_bias")
        shape = tuple(initializers[old].dims) if old else values.shape
        graph.initializer.append(numpy_helper.from_array(values.reshape(shape), name))
        if old:
            node.input[2] = name
        else:
            node.input.append(name)
    return result


def biases_for(analysis: GroupAnalysis, plan: Plan, biases: Biases) -> dict[str, np.ndarray]:
    """weight -> corrected bias for the weight widths `plan` chooses (the stitching: every
    configuration carries the biases corrected for its own widths, and no others)."""
    chosen = {}
    for group in analysis.groups:
        candidate = plan.get(group.id)
        if candidate is None or candidate.w_bits is None:
            continue
        chosen.update({w: biases[(w, candidate.w_bits)] for w in group.weights if (w, candidate.w_bits) in biases})
    return chosen
