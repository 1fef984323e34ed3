"""The Gram matrices of layer inputs over the calibration data, streamed batch by batch.

Why: AdaRound needs a layer's inputs only through G = X X^T (and, with inputs from the
quantized network, X_f X_q^T), and bias correction only through their means, so they are accumulated from ONNX Runtime's values of each
layer input, batch by batch, on a seeded subsample of output positions (`layer_inputs.unfold`):
memory holds one batch and G's cost does not grow with the image size. Only the prefix of the
network that computes the wanted inputs is run.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from onnxmp import runtime
from onnxmp.calib_data import CalibrationSet
from onnxmp.graph import build
from onnxmp.passes.extract_subgraph import producing_nodes, subgraph
from onnxmp.passes.layer_inputs import LinearLayout, unfold


@dataclass(frozen=True)
class InputStats:
    """What one layer's sampled input rows give: second moments (per group, [groups, K, K])
    and means ([groups, K]); `*_f` pair the float inputs with the quantized ones (None, or
    the same as `mean_x`, when the inputs are the float network's)."""

    g_xx: np.ndarray
    g_fx: np.ndarray | None
    mean_x: np.ndarray
    mean_f: np.ndarray


@dataclass(frozen=True)
class GramSettings:
    """How layer inputs are sampled; part of the AdaRound cache key."""

    positions: int = 64  # output positions per sample and layer
    batch_size: int = 8
    seed: int = 0


def layer_grams(
    model: onnx.ModelProto,
    layouts: Sequence[LinearLayout],
    calib: CalibrationSet,
    settings: GramSettings,
    *,
    quantized: onnx.ModelProto | None = None,
) -> dict[str, InputStats]:
    """Per weight, G_xx, G_fx and the means, averaged over the sampled rows; G_fx is None without `quantized`.

    x are the float layer inputs of `model`, or of `quantized` when given (the same rows of
    both models are taken, so G_fx = X_f X_q^T / rows pairs float and quantized values).
    """
    names = sorted({layout.input for layout in layouts})
    float_sess = _prefix_session(model, names)
    quant_sess, q_names = None, {}
    if quantized is not None:  # the same node reads its input through a Q/DQ pair there
        reads = {node.name: node.input[0] for node in quantized.graph.node}
        q_names = {layout.input: reads[layout.node] for layout in layouts}
        quant_sess = _prefix_session(quantized, sorted(set(q_names.values())))
    sums: dict[str, list[Any]] = {layout.weight: [0.0, 0.0 if quantized is not None else None, 0, 0.0, 0.0] for layout in layouts}
    for start, feeds in zip(range(0, calib.num_samples, settings.batch_size), calib.batches(settings.batch_size), strict=True):
        values = _run(float_sess, names, feeds)
        q_values = None
        if quant_sess is not None:
            got = _run(quant_sess, sorted(set(q_names.values())), feeds)
            q_values = {name: got[q_names[name]] for name in names}
        for layout in layouts:
            seed = [settings.seed, zlib.crc32(layout.weight.encode()), start]
            rows_f = unfold(values[layout.input], layout, settings.positions, np.random.default_rng(seed))
            rows_x = rows_f if q_values is None else unfold(
                q_values[layout.input], layout, settings.positions, np.random.default_rng(seed))
            _accumulate(sums[layout.weight], rows_f, rows_x)
    return {w: InputStats(s[0] / s[2], None if s[1] is None else s[1] / s[2], s[3] / s[2], s[4] / s[2]) for w, s in sums.items()}


def _prefix_session(model: onnx.ModelProto, tensors: Sequence[str]) -> runtime.Session:
    """A session of the part of `model` that computes `tensors` (ORT would run it all)."""
    index = build(model)
    nodes = producing_nodes(index, tensors, set(index.graph_inputs))
    read = {t for name in nodes for t in index.nodes[name].input}
    inputs = [t for t in index.graph_inputs if t in read or t in tensors]
    return runtime.session(subgraph(model, index, nodes, inputs, list(tensors)))


def _run(sess: runtime.Session, names: Sequence[str], feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    wanted = {i.name for i in sess.get_inputs()}
    return dict(zip(names, sess.run(list(names), {k: v for k, v in feeds.items() if k in wanted}), strict=True))


def with_outputs(model: onnx.ModelProto, tensors: Sequence[str]) -> onnx.ModelProto:
    """A copy of `model` whose outputs are `tensors` only (ORT then frees everything else)."""
    result = onnx.ModelProto()
    result.CopyFrom(model)
    infos = {v.name: v for v in (*result.graph.value_info, *result.graph.input, *result.graph.output)}
    del result.graph.output[:]
    for name in tensors:
        info = infos.get(name)
        result.graph.output.append(info if info is not None else onnx.helper.make_empty_tensor_value_info(name))
    return result


def _accumulate(total: list[Any], rows_f: np.ndarray, rows_x: np.ndarray) -> None:
    """Add X^T X (and X_f^T X_x) and the row sums of one batch's rows, per group, in float64."""
    xt = rows_x.transpose(1, 2, 0).astype(np.float64)  # [groups, K, M]
    total[0] = total[0] + np.matmul(xt, xt.transpose(0, 2, 1))
    if total[1] is not None:
        total[1] = total[1] + np.matmul(rows_f.transpose(1, 2, 0).astype(np.float64), xt.transpose(0, 2, 1))
    total[2] += rows_x.shape[0]
    total[3] = total[3] + rows_x.sum(axis=0, dtype=np.float64)
    total[4] = total[4] + rows_f.sum(axis=0, dtype=np.float64)
