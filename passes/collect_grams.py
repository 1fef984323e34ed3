"""The Gram matrices of layer inputs over the calibration data, streamed batch by batch.

Why: AdaRound needs a layer's inputs only through G = X X^T (and, with inputs from the
quantized network, X_f X_q^T), and bias correction only through their means (E[x], E[x_f]),
so they are accumulated from ONNX Runtime's values of each
layer input, batch by batch, on a seeded subsample of output positions (`layer_inputs.unfold`):
memory holds one batch and G's cost does not grow with the image size.

Rule cases:
1. Float inputs (`layer_grams`): one run of the prefix of the network that computes every
   wanted input, for all layers at once.
2. Inputs from the network quantized so far (`PrefixGrams`): a layer's inputs depend on the
   rounding of every layer before it, so the quantized network is walked forward from layer
   to layer (`frontier_walk`), the float network beside it, each step running only the
   nodes between two cuts: about one forward pass of both networks in all, instead of one
   prefix per layer. Checkpoints stay within `WALK_BUDGET_BYTES` per network.
3. The same rows of both networks are taken (one seeded draw per weight and batch), so
   G_fx pairs float and quantized values of the same positions, and the Grams do not depend
   on which rule computed the values (beyond float rounding inside ONNX Runtime).
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
from onnxmp.passes.canonicalize import infer_shapes
from onnxmp.passes.extract_subgraph import cut_before, producing_nodes, subgraph
from onnxmp.passes.frontier_walk import FrontierWalk
from onnxmp.passes.layer_inputs import LinearLayout, unfold

WALK_BUDGET_BYTES = 128 * 2**20  # per walked network; 256 EfficientNet-Lite0 samples: from 56x56x24 on


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
    model: onnx.ModelProto, layouts: Sequence[LinearLayout], calib: CalibrationSet, settings: GramSettings
) -> dict[str, InputStats]:
    """Per weight, G_xx (G_fx None) and the means of the float inputs of `model` (rule 1)."""
    names = sorted({layout.input for layout in layouts})
    sess = _prefix_session(model, names)
    sums: dict[str, list[Any]] = {layout.weight: [0.0, None, 0, 0.0, 0.0] for layout in layouts}
    for start, feeds in zip(calib.starts(settings.batch_size), calib.batches(settings.batch_size), strict=True):
        values = _run(sess, names, feeds)
        for layout in layouts:
            rows = unfold(values[layout.input], layout, settings.positions, _rng(settings, layout, start))
            _accumulate(sums[layout.weight], rows, rows)
    return _averaged(sums)


class PrefixGrams:
    """(G_xx, G_fx) and means of layer inputs x in the network quantized so far, step by step (rule 2).

    `steps` lists the layers of each step in graph order; a layer whose input is computed
    before the step's first layer (the q, k and v projections of one input, two branches)
    joins that step: its input is in the step's cut and no rounding of the step changes it. After
    rounding a step's weights, `update` puts them into the walked quantized network
    before the next step. `quantized` must keep `model`'s node names and hold its weights as
    float initializers under their own names (fake-quantized); the walk works on a copy.
    """

    def __init__(
        self, model: onnx.ModelProto, quantized: onnx.ModelProto, layouts: Sequence[LinearLayout],
        calib: CalibrationSet, settings: GramSettings,
    ) -> None:
        quantized = infer_shapes(quantized)  # dtypes of the Q/DQ outputs: only float tensors cross a cut
        f_graph, q_graph = build(model), build(quantized)
        reads = {node.name: node.input[0] for node in quantized.graph.node}
        self._q_input = {layout.weight: reads[layout.node] for layout in layouts}
        steps: list[list[LinearLayout]] = []
        for layout in sorted(layouts, key=lambda layout: q_graph.index(layout.node)):
            producer = q_graph.producer_of.get(self._q_input[layout.weight])
            if steps and (producer is None or q_graph.index(producer) < q_graph.index(steps[-1][0].node)):
                steps[-1].append(layout)  # its input is computed before the step's first layer
            else:
                steps.append([layout])
        self.steps = tuple(tuple(step) for step in steps)
        q_cuts = [cut_before(q_graph, step[0].node) for step in self.steps]
        f_cuts = [cut_before(f_graph, step[0].node) for step in self.steps]
        size = settings.batch_size
        self._float = FrontierWalk(model, f_graph, calib, f_cuts, batch_size=size, budget_bytes=WALK_BUDGET_BYTES)
        self._quant = FrontierWalk(quantized, q_graph, calib, q_cuts, batch_size=size, budget_bytes=WALK_BUDGET_BYTES)
        self._settings = settings

    def grams(self, step: int) -> dict[str, InputStats]:
        """Per weight of `steps[step]`, G_xx, G_fx and the means, x from the quantized network."""
        layouts = self.steps[step]
        sums: dict[str, list[Any]] = {layout.weight: [0.0, 0.0, 0, 0.0, 0.0] for layout in layouts}
        for (start, f_values), (_, q_values) in zip(self._float.chunks(step), self._quant.chunks(step), strict=True):
            for layout in layouts:
                positions = self._settings.positions
                rows_f = unfold(f_values[layout.input], layout, positions, _rng(self._settings, layout, start))
                rows_x = unfold(q_values[self._q_input[layout.weight]], layout, positions, _rng(self._settings, layout, start))
                _accumulate(sums[layout.weight], rows_f, rows_x)
        return _averaged(sums)

    def update(self, network: onnx.ModelProto, step: int) -> None:
        """Take the constants the layers of `steps[step]` read (weights, biases) from `network`,
        the quantized network with that step rounded; later steps' inputs then see them."""
        nodes = {layout.node for layout in self.steps[step]}
        read = {t for node in network.graph.node if node.name in nodes for t in node.input}
        for init in network.graph.initializer:
            if init.name in read:
                self._quant.set_constant(init)


def _rng(settings: GramSettings, layout: LinearLayout, start: int) -> np.random.Generator:
    """The draw of rows for one weight and batch: the same in both networks (rule 3)."""
    return np.random.default_rng([settings.seed, zlib.crc32(layout.weight.encode()), start])


def _averaged(sums: Mapping[str, list[Any]]) -> dict[str, InputStats]:
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


def _accumulate(total: list[Any], rows_f: np.ndarray, rows_x: np.ndarray, groups_at_once: int = 128) -> None:
    """Add X^T X (and X_f^T X_x) and the row sums of one batch's rows, per group, in float64.

    Groups go `groups_at_once` at a time (the same products): the float64 copies of a
    depthwise layer's rows (1152 groups) would otherwise take hundreds of MB at once.
    """
    count = rows_x.shape[1]
    parts_xx, parts_fx = [], []
    for first in range(0, count, groups_at_once):
        xt = rows_x[:, first : first + groups_at_once].transpose(1, 2, 0).astype(np.float64)  # [groups, K, M]
        parts_xx.append(np.matmul(xt, xt.transpose(0, 2, 1)))
        if total[1] is not None:
            ft = rows_f[:, first : first + groups_at_once].transpose(1, 2, 0).astype(np.float64)
            parts_fx.append(np.matmul(ft, xt.transpose(0, 2, 1)))
    total[0] = total[0] + np.concatenate(parts_xx)
    if total[1] is not None:
        total[1] = total[1] + np.concatenate(parts_fx)
    total[2] += rows_x.shape[0]
    total[3] = total[3] + rows_x.sum(axis=0, dtype=np.float64)
    total[4] = total[4] + rows_f.sum(axis=0, dtype=np.float64)
