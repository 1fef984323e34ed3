"""AdaRound: hand-checkable rounding decisions, binary h(V), determinism, the store.

The hand case (a Gemm with one output and two inputs, scale 1/8, 4 bits):
    w = [2.5, 0.1] / 8, inputs x = [1, 1], [1, 0], [0, 1].
Nearest (half to even) gives integers [2, 0]: rounding errors d = [-0.5, -0.1] / 8.
The output errors d.x over the three inputs, times 64:
    [2, 0]: (-0.6)^2 + (-0.5)^2 + (-0.1)^2 = 0.62      [3, 0]: 0.4^2 + 0.5^2 + 0.1^2 = 0.42
    [2, 1]: 0.4^2 + 0.5^2 + 0.9^2 = 1.22               [3, 1]: 1.4^2 + 0.5^2 + 0.9^2 = 3.02
so the weight exactly between 2 and 3 must go up: the second weight's error is negatively
signed and its input is correlated with the first.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx.parser
import pytest
from onnx import numpy_helper

from onnxmp import quant_math
from onnxmp.calib_data import CalibrationSet
from onnxmp.passes.adaround import AdaRoundParams, LayerProblem, adaround, gram_factor, output_error
from onnxmp.passes.collect_grams import GramSettings
from onnxmp.passes.round_weights import RoundingOptions, round_layers
from onnxmp.records import Grid, TensorEncoding
from onnxmp.store import ResultStore
from tests import builders, oracles

HAND_W = np.array([[2.5, 0.1]], np.float32) / 8
HAND_X = np.array([[1, 1], [1, 0], [0, 1]], np.float32)


def _hand_gemm() -> onnx.ModelProto:
    model = onnx.parser.parse_model(
        builders.HEADER + "\ng (float[N,2] x) => (float[N,1] y) { [gemm] y = Gemm <transB = 1> (x, w) }"
    )
    model.graph.initializer.append(numpy_helper.from_array(HAND_W, "w"))
    return model


def _encoding(name: str, scale: float, channels: int, axis: int | None = 0) -> TensorEncoding:
    return TensorEncoding(name, 4, (scale,) * channels, (0,) * channels, Grid.SYMMETRIC_SIGNED, axis)


def test_weight_between_two_levels_goes_the_way_that_reduces_output_error(tmp_path) -> None:
    model = _hand_gemm()
    encodings = {("w", 4): _encoding("w", 0.125, 1)}
    rounded = round_layers(model, encodings, CalibrationSet({"x": HAND_X})).integers
    nearest = quant_math.quantize(HAND_W, 0.125, 0, -7, 7)
    assert nearest.tolist() == [[2, 0]]
    assert rounded[("w", 4)].tolist() == [[3, 0]]
    model_problem = LayerProblem(HAND_W[None], np.float32(0.125), -7, 7, gram_factor((HAND_X.T @ HAND_X / 3)[None], 1.0))
    q, h = adaround(replace(model_problem, is_gram=True), AdaRoundParams())
    assert q.tolist() == [[[3, 0]]] and h.tolist() == [[[1.0, 0.0]]]  # h(V) ends exactly in {0, 1}
    errors = {}
    for q in ([2, 0], [3, 0], [2, 1], [3, 1]):
        diff = (np.array([q]) * 0.125 - HAND_W) @ HAND_X.T
        errors[tuple(q)] = float(np.sum(diff**2) * 64)
    assert errors == pytest.approx({(2, 0): 0.62, (3, 0): 0.42, (2, 1): 1.22, (3, 1): 3.02})


def test_h_ends_in_zero_or_one_and_error_drops() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((400, 16)).astype(np.float32) @ rng.standard_normal((16, 16)).astype(np.float32)
    w = rng.standard_normal((1, 8, 16)).astype(np.float32) * 0.1
    scale = np.abs(w).max(axis=2, keepdims=True) / 7
    gram = (x.T.astype(np.float64) @ x / len(x))[None]
    factor = gram_factor(gram, 1.0)
    problem = LayerProblem(w, scale, -7, 7, factor, is_gram=factor.shape == gram.shape)
    q, h = adaround(problem, AdaRoundParams())
    assert np.mean((h == 0) | (h == 1)) >= 0.99  # the rare undecided h rounds at 0.5
    nearest = np.clip(np.round(w / scale), -7, 7)
    assert output_error(q, problem) < 0.5 * output_error(nearest, problem)
    assert np.all(np.abs(q - w / scale) < 1)  # only ever the level below or above


def _smooth_images(count: int, seed: int) -> dict[str, np.ndarray]:
    """Images whose neighbouring pixels and channels are correlated (as in real images):
    with independent inputs nearest rounding is already optimal and AdaRound cannot win."""
    rng = np.random.default_rng(seed)
    x = np.cumsum(np.cumsum(rng.standard_normal((count, 1, 10, 10)), axis=2), axis=3) / 5
    return {"x": (x + 0.3 * rng.standard_normal((count, 4, 10, 10))).astype(np.float32)}


def test_conv_adaround_lowers_the_measured_output_error() -> None:
    model = builders.conv_geometry(stride=2, pad=1, dilation=1, group=2)
    w = builders.canonical(model).graph.constant("w")
    scale = (np.abs(w).reshape(6, -1).max(axis=1) / 7).astype(np.float32)
    enc = TensorEncoding("w", 4, tuple(map(float, scale)), (0,) * 6, Grid.SYMMETRIC_SIGNED, 0)
    rounded = round_layers(model, {("w", 4): enc}, CalibrationSet(_smooth_images(64, 0))).integers[("w", 4)]
    feeds = _smooth_images(16, 1)  # held-out inputs
    want = oracles.run(model, feeds)["y"]
    errors = []
    for q in (quant_math.quantize(w, scale.reshape(6, 1, 1, 1), 0, -7, 7), rounded):
        weights = {"w": quant_math.dequantize(q, scale.reshape(6, 1, 1, 1), 0)}
        got = oracles.run(_with_weights(model, weights), feeds)["y"]
        errors.append(float(np.sum((got - want) ** 2)))
    assert errors[1] < 0.7 * errors[0]


def _with_weights(model: onnx.ModelProto, weights) -> onnx.ModelProto:
    result = onnx.ModelProto()
    result.CopyFrom(model)
    for init in result.graph.initializer:
        if init.name in weights:
            init.CopyFrom(numpy_helper.from_array(weights[init.name].astype(np.float32), init.name))
    return result


def test_deterministic_and_read_back_from_the_store(tmp_path) -> None:
    model = builders.gemm_matmul()
    encodings = {("w_g", 4): _encoding("w_g", 0.1, 5, axis=1), ("w_m", 4): _encoding("w_m", 0.1, 3, axis=1)}
    calib = CalibrationSet(builders.feeds_for(model, batch=32))
    options = RoundingOptions(params=AdaRoundParams(iterations=50), grams=GramSettings(seed=3))
    store = ResultStore(tmp_path / "adaround.jsonl", "key")
    first = round_layers(model, encodings, calib, options=options, store=store).integers
    lines = (tmp_path / "adaround.jsonl").read_text().splitlines()
    again = round_layers(model, encodings, calib, options=options).integers
    stored = round_layers(model, encodings, calib, options=options, store=store).integers
    assert len(lines) == 2 and (tmp_path / "adaround.jsonl").read_text().splitlines() == lines
    for key in encodings:
        np.testing.assert_array_equal(first[key], again[key])
        np.testing.assert_array_equal(first[key], stored[key])
    changed = RoundingOptions(params=AdaRoundParams(iterations=51), grams=GramSettings(seed=3))
    round_layers(model, encodings, calib, options=changed, store=store)
    assert len((tmp_path / "adaround.jsonl").read_text().splitlines()) == 4  # new hyper-parameters, new ids


def test_weights_above_max_bits_and_unsupported_ops_stay_nearest() -> None:
    model = builders.batched_matmul()
    enc = _encoding("w", 0.1, 1, axis=None)
    assert dict(round_layers(model, {("w", 4): enc}, CalibrationSet(builders.feeds_for(model))).integers) == {}
    gemm = _hand_gemm()
    wide = {("w", 8): TensorEncoding("w", 8, (0.01,), (0,), Grid.SYMMETRIC_SIGNED, 0)}
    options = RoundingOptions(max_bits=6)
    assert dict(round_layers(gemm, wide, CalibrationSet({"x": HAND_X}), options=options).integers) == {}


def test_a_dead_input_group_leaves_its_weights_at_nearest_without_nan() -> None:
    # group 0 reads an input that is always 0 (a dead channel), group 1 a live one
    w = np.array([[[0.26, -0.14]], [[0.26, -0.14]]], np.float32)
    gram = np.stack([np.zeros((2, 2)), np.array([[1.0, 0.9], [0.9, 1.0]])])
    problem = LayerProblem(w, np.float32(0.1), -7, 7, gram.astype(np.float32), is_gram=True)
    with np.errstate(all="raise"):
        q, h = adaround(problem, AdaRoundParams())
    assert q[0].tolist() == [[3, -1]] and np.isfinite(h).all()  # nearest: 2.6 -> 3, -1.4 -> -1
