"""Grams of layer inputs from the network quantized so far, walked forward (`PrefixGrams`).

Checked on the shipped digits CNN at W4A8 (residual Add, Concat, two convs sharing one
input, depthwise, Flatten->Gemm): the walked Grams of every layer equal Grams computed the
direct way, by running the whole quantized network with the weights rounded so far and
unfolding the layer input with the documented row draw (rule 3 of `collect_grams`). The
"rounding" each layer gets is floor instead of nearest, so a walk that missed an update
(`update`) would feed later layers different inputs.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxmp import calib_data, quant_math, steps
from onnxmp.calib_data import CalibrationSet
from onnxmp.graph import build
from onnxmp.hw_profile import WeightRounding, load_profile
from onnxmp.passes.collect_grams import GramSettings, PrefixGrams
from onnxmp.passes.layer_inputs import layout_of, unfold, why_not_linear
from onnxmp.run_records import Settings
from tests import oracles

MODELS = Path(__file__).resolve().parents[2] / "models"
SAMPLES = 12  # one full chunk of 8 and a short one
SETTINGS = GramSettings(positions=5, batch_size=8, seed=3)


@pytest.fixture(scope="module")
def digits():
    model = onnx.load(str(MODELS / "digits_cnn.onnx"))
    calib = calib_data.load_arrays(MODELS / "digits_calib.npz", model)
    calib = CalibrationSet({k: v[:SAMPLES] for k, v in calib.arrays.items()})
    settings = Settings(weight_rounding=WeightRounding.ADAROUND)
    prepared = steps.prepare(model, load_profile("npu"), calib)
    return prepared, steps.calibrate_ranges(prepared, calib, settings), calib


def _expected(prepared, calibrated, calib, rounded, layout) -> tuple[np.ndarray, ...]:
    """(G_xx, G_fx, E[x], E[x_f]) the direct way: whole networks, every batch, the same row draw."""
    network = steps.simulate(prepared, steps.width_plan(prepared, 4), calibrated.encodings, rounded)
    q_input = next(n for n in network.graph.node if n.name == layout.node).input[0]
    x_q = oracles.run(oracles.with_outputs(network, [q_input]), calib.arrays)[q_input]
    x_f = oracles.run(oracles.with_outputs(prepared.model, [layout.input]), calib.arrays)[layout.input]
    g_xx = g_fx = sum_x = sum_f = 0.0
    rows = 0
    for start in range(0, SAMPLES, SETTINGS.batch_size):
        draw = [SETTINGS.seed, zlib.crc32(layout.weight.encode()), start]
        stop = start + SETTINGS.batch_size
        rows_x = unfold(x_q[start:stop], layout, SETTINGS.positions, np.random.default_rng(draw)).astype(np.float64)
        rows_f = unfold(x_f[start:stop], layout, SETTINGS.positions, np.random.default_rng(draw)).astype(np.float64)
        g_xx = g_xx + np.einsum("mgk,mgl->gkl", rows_x, rows_x)
        g_fx = g_fx + np.einsum("mgk,mgl->gkl", rows_f, rows_x)
        sum_x, sum_f = sum_x + rows_x.sum(axis=0), sum_f + rows_f.sum(axis=0)
        rows += len(rows_x)
    return g_xx / rows, g_fx / rows, sum_x / rows, sum_f / rows


def test_walked_grams_equal_the_network_rounded_so_far(digits) -> None:
    prepared, calibrated, calib = digits
    graph = build(prepared.model)
    weights = [w for g in prepared.analysis.groups for w in g.weights if why_not_linear(graph, w) is None]
    layouts = [layout_of(graph, w) for w in weights]
    network = steps.simulate(prepared, steps.width_plan(prepared, 4), calibrated.encodings, {})
    prefix = PrefixGrams(prepared.model, network, layouts, calib, SETTINGS)
    assert sorted(len(step) for step in prefix.steps)[-1] == 2  # branch_a and branch_b read one tensor
    rounded: dict[tuple[str, int], np.ndarray] = {}
    for step in range(len(prefix.steps)):
        got = prefix.grams(step)
        for layout in prefix.steps[step]:
            g_xx, g_fx, mean_x, mean_f = _expected(prepared, calibrated, calib, rounded, layout)
            stats = got[layout.weight]
            np.testing.assert_allclose(stats.g_xx, g_xx, rtol=1e-5, atol=1e-6 * np.abs(g_xx).max())
            np.testing.assert_allclose(stats.g_fx, g_fx, rtol=1e-5, atol=1e-6 * np.abs(g_fx).max())
            np.testing.assert_allclose(stats.mean_x, mean_x, rtol=1e-5, atol=1e-6 * np.abs(mean_x).max())
            np.testing.assert_allclose(stats.mean_f, mean_f, rtol=1e-5, atol=1e-6 * np.abs(mean_f).max())
        for layout in prefix.steps[step]:  # "round" down: not what the network had
            enc = calibrated.encodings[(layout.weight, 4)]
            w = graph.constant(layout.weight)
            scale = np.asarray(enc.scale, np.float32).reshape(quant_math.broadcast_shape(w.ndim, enc.axis))
            rounded[(layout.weight, 4)] = np.clip(np.floor(w / scale), enc.qmin, enc.qmax).astype(np.int64)
        prefix.update(steps.simulate(prepared, steps.width_plan(prepared, 4), calibrated.encodings, rounded), step)
    assert len(rounded) == len(weights) == 7
