"""Output-aware weight ranges on a hand case where they and the weight MSE disagree.

One output row w = [1.0, 0.35] at 4 bits (levels -7..7); the first input is always 0, so
only the second weight reaches the output: G = diag(0, 2.5) for inputs [0, 1] and [0, 2].
  weight MSE keeps the |max|: s = 1/7, q = [7, 2], output error (2/7 - 0.35)^2 * 2.5 = 0.010332.
  output-aware, over ratios 0.20, 0.22, ..., 1.00 of |max|: the grid point nearest 0.35 is
  3 * 0.82 / 7 = 0.351429 (s = 0.82 / 7, q = [7, 3] with 1.0 clipped to 0.82), output error
  (0.351429 - 0.35)^2 * 2.5 = 5.1e-6; no other ratio puts a level closer to 0.35
  (0.80: 0.342857, 0.62: 0.354286, 0.50: 0.357143, 0.36: 0.36, ...).
"""

from __future__ import annotations

import numpy as np
import onnx.parser
import pytest
from onnx import numpy_helper

from onnxmp import quant_math
from onnxmp.calib_data import CalibrationSet
from onnxmp.passes.output_range import output_aware_scales
from onnxmp.passes.round_weights import RoundingOptions, round_layers, with_scales
from onnxmp.records import Grid, TensorEncoding
from onnxmp.run_records import AdaRoundInputs
from tests import builders

W = np.array([[1.0, 0.35]], np.float32)
X = np.array([[0, 1], [0, 2]], np.float32)


def test_output_aware_scale_trades_the_dead_input_weight_for_the_live_one() -> None:
    mse = quant_math.mse_weight_scale(W, 4, 0)
    assert mse.tolist() == pytest.approx([1 / 7])
    gram = (X.T @ X / 2)[None]
    chosen = output_aware_scales(W[None], gram, 7, mse.reshape(1, 1, 1))
    assert chosen.reshape(-1).tolist() == pytest.approx([0.82 / 7])
    errors = {}
    for name, s in (("mse", float(mse[0])), ("output", float(chosen.reshape(-1)[0]))):
        q = np.clip(np.round(W / s), -7, 7)
        errors[name] = (float(((s * q - W) @ gram[0] @ (s * q - W).T)[0, 0]), float(np.mean((s * q - W) ** 2)))
    assert errors["mse"][0] == pytest.approx(0.010332, rel=1e-3) and errors["output"][0] == pytest.approx(5.1e-6, rel=0.01)
    assert errors["output"][1] > errors["mse"][1]  # worse for the weights themselves


def test_round_layers_returns_the_scale_and_integers_made_on_it() -> None:
    model = onnx.parser.parse_model(builders.HEADER + "\ng (float[N,2] x) => (float[N,1] y) { [gemm] y = Gemm <transB = 1> (x, w) }")
    model.graph.initializer.append(numpy_helper.from_array(W, "w"))
    enc = TensorEncoding("w", 4, (1 / 7,), (0,), Grid.SYMMETRIC_SIGNED, 0)
    options = RoundingOptions(adaround=False, output_range=True, inputs=AdaRoundInputs.FLOAT)
    got = round_layers(model, {("w", 4): enc}, CalibrationSet({"x": X}), options=options)
    assert got.scales[("w", 4)] == pytest.approx((0.82 / 7,)) and dict(got.integers) == {}
    assert with_scales({("w", 4): enc}, got)[("w", 4)].scale == got.scales[("w", 4)]
