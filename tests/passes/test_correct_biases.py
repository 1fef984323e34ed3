"""Empirical bias correction: the exact correction on a hand Gemm, a hand Conv and a chain of two Gemms.

Gemm (one output, two inputs, scale 1/4, 4 bits): w = [0.3, -0.2] rounds to [1, -1] / 4,
errors d = [-0.05, -0.05]; the inputs [1, 3] and [3, 5] have mean [2, 4], so the mean output
error is d . [2, 4] = -0.3 and the bias 0.5 becomes 0.5 + 0.3 = 0.8.

Conv (one input channel, two output channels, kernel 1x2, no bias, scale 1/4): the input row
[1, 2, 4] gives the windows [1, 2] and [2, 4], mean [1.5, 3].
  channel 0: w = [0.3, -0.2] -> [1, -1] / 4, d = [-0.05, -0.05], mean error -0.225
  channel 1: w = [0.1, 0.4]  -> [0, 2] / 4,  d = [-0.1, 0.1],    mean error 0.15
so the added bias is [0.225, -0.15].
"""

from __future__ import annotations

import numpy as np
import onnx.parser
import pytest
from onnx import numpy_helper

from onnxmp.calib_data import CalibrationSet
from onnxmp.graph import build
from onnxmp.passes.canonicalize import infer_shapes
from onnxmp.passes.correct_biases import why_not_correctable, with_biases
from onnxmp.passes.layer_inputs import layout_of
from onnxmp.passes.round_weights import RoundingOptions, round_layers
from onnxmp.records import Grid, TensorEncoding
from onnxmp.run_records import AdaRoundInputs
from tests import builders, oracles

NEAREST_BC = RoundingOptions(adaround=False, bias_correction=True, inputs=AdaRoundInputs.FLOAT)


def _model(text: str, **arrays: np.ndarray) -> onnx.ModelProto:
    model = onnx.parser.parse_model(builders.HEADER + "\n" + text)
    model.graph.initializer.extend(numpy_helper.from_array(a.astype(np.float32), n) for n, a in arrays.items())
    return model


def _enc(scale: float, channels: int, axis: int) -> TensorEncoding:
    return TensorEncoding("w", 4, (scale,) * channels, (0,) * channels, Grid.SYMMETRIC_SIGNED, axis)


def test_gemm_bias_gets_the_mean_output_error_of_its_rounding() -> None:
    model = _model("g (float[N,2] x) => (float[N,1] y) { [gemm] y = Gemm <transB = 1> (x, w, b) }",
                   w=np.array([[0.3, -0.2]]), b=np.array([0.5]))
    x = np.array([[1, 3], [3, 5]], np.float32)
    got = round_layers(model, {("w", 4): _enc(0.25, 1, 0)}, CalibrationSet({"x": x}), options=NEAREST_BC)
    assert dict(got.integers) == {}  # nearest integers are not returned: only the bias is new
    assert got.biases[("w", 4)].tolist() == pytest.approx([0.8], abs=1e-6)


def test_conv_without_bias_gets_one_and_its_mean_output_error_vanishes() -> None:
    w = np.array([[[[0.3, -0.2]]], [[[0.1, 0.4]]]])
    model = _model("g (float[N,1,1,3] x) => (float[N,2,1,2] y) { [conv] y = Conv <kernel_shape = [1, 2]> (x, w) }", w=w)
    x = np.array([[[[1, 2, 4]]]], np.float32)
    got = round_layers(model, {("w", 4): _enc(0.25, 2, 0)}, CalibrationSet({"x": x}), options=NEAREST_BC)
    bias = got.biases[("w", 4)]
    assert bias.tolist() == pytest.approx([0.225, -0.15], abs=1e-6)
    w_q = np.round(w / 0.25) * 0.25
    quantized = with_biases(_model(
        "g (float[N,1,1,3] x) => (float[N,2,1,2] y) { [conv] y = Conv <kernel_shape = [1, 2]> (x, w) }", w=w_q), {"w": bias})
    assert [i.name for i in quantized.graph.initializer] == ["w", "w_bias"] and len(quantized.graph.node[0].input) == 3
    error = oracles.run(quantized, {"x": x})["y"] - oracles.run(model, {"x": x})["y"]
    assert error.mean(axis=(0, 2, 3)) == pytest.approx([0.0, 0.0], abs=1e-6)  # per output channel


def test_shared_bias_is_copied_and_matmul_is_left_alone() -> None:
    text = ("g (float[N,2] x) => (float[N,1] y, float[N,1] z) "
            "{ [g1] y = Gemm <transB = 1> (x, w, b)\n [g2] z = Gemm <transB = 1> (x, v, b) }")
    model = _model(text, w=np.array([[0.3, -0.2]]), v=np.array([[1.0, 1.0]]), b=np.array([0.5]))
    changed = with_biases(model, {"w": np.array([0.8], np.float32)})
    arrays = {i.name: numpy_helper.to_array(i).tolist() for i in changed.graph.initializer}
    assert arrays["b"] == [0.5] and arrays["w_bias"] == pytest.approx([0.8])
    assert list(changed.graph.node[0].input) == ["x", "w", "w_bias"] and list(changed.graph.node[1].input) == ["x", "v", "b"]
    matmul = builders.gemm_matmul()
    graph = build(matmul)
    assert why_not_correctable(graph, layout_of(graph, "w_m")) == "MatMul " + graph.consumers("w_m")[0].name + " has no bias input"


def test_quantized_prefix_means_take_up_the_prefix_shift_too() -> None:
    from onnxmp.passes.collect_grams import InputStats
    from onnxmp.passes.correct_biases import corrected_bias

    graph = build(_model("g (float[N,2] x) => (float[N,1] y) { [gemm] y = Gemm <transB = 1> (x, w, b) }",
                         w=np.array([[0.3, -0.2]]), b=np.array([0.5])))
    layout = layout_of(graph, "w")
    w, w_q = np.array([[0.3, -0.2]]), np.array([[0.25, -0.25]])
    stats = InputStats(np.eye(2)[None], None, mean_x=np.array([[1.0, 1.0]]), mean_f=np.array([[2.0, 4.0]]))
    # quantized: 0.5 - (0.25 - 0.25 - (0.6 - 0.8)) = 0.3; float: 0.5 - (-0.05 * 2 - 0.05 * 4) = 0.8
    assert corrected_bias(w, w_q, layout, stats, np.array([0.5]), quantized=True).tolist() == pytest.approx([0.3])
    assert corrected_bias(w, w_q, layout, stats, np.array([0.5]), quantized=False).tolist() == pytest.approx([0.8])


def test_means_follow_adaround_unless_given() -> None:
    assert RoundingOptions(bias_correction=True).prefix_means  # AdaRound on the quantized prefix: its means
    assert not RoundingOptions(bias_correction=True, adaround=False).prefix_means  # nearest: the float means
    assert not RoundingOptions(inputs=AdaRoundInputs.FLOAT).prefix_means
    assert RoundingOptions(adaround=False, bias_inputs=AdaRoundInputs.QUANTIZED).prefix_means


CHAIN = """g (float[N,2] x) => (float[N,1] y) {
    [gemm1] h = Gemm <transB = 1> (x, w1, b1)
    [gemm2] y = Gemm <transB = 1> (h, w2, b2)
}"""


def test_the_walked_network_carries_the_corrected_biases_of_the_layers_before() -> None:
    """Nearest + bias correction from the quantized prefix's means on two chained Gemms.

    gemm1 as in the Gemm case above: b1 0.5 -> 0.8. With it, h = [0.3, 0.3] in the quantized
    network (without it [0, 0]); float h = [0.2, 0.4], mean 0.3. gemm2: w2 = 0.3 -> 0.25, so
    b2' = 0 - (0.25 * 0.3 - 0.3 * 0.3) = 0.015 (0.09 had the walk kept b1 = 0.5).
    """
    w1, b1, w2, b2 = np.array([[0.3, -0.2]]), np.array([0.5]), np.array([[0.3]]), np.array([0.0])
    seen = []

    def quantized(done):  # nearest weights, and the corrected biases chosen so far
        seen.append(sorted(w for w, _ in done.biases))
        network = _model(CHAIN, w1=np.round(w1 / 0.25) * 0.25, b1=b1, w2=np.round(w2 / 0.25) * 0.25, b2=b2)
        return with_biases(network, {w: b for (w, _), b in done.biases.items()})

    encodings = {(w, 4): TensorEncoding(w, 4, (0.25,), (0,), Grid.SYMMETRIC_SIGNED, 0) for w in ("w1", "w2")}
    options = RoundingOptions(adaround=False, bias_correction=True, bias_inputs=AdaRoundInputs.QUANTIZED)
    x = np.array([[1, 3], [3, 5]], np.float32)
    model = infer_shapes(_model(CHAIN, w1=w1, b1=b1, w2=w2, b2=b2))  # the walk crosses cuts by dtype, as on prepared models
    got = round_layers(model, encodings, CalibrationSet({"x": x}),
                       options=options, quantized=quantized)
    assert got.biases[("w1", 4)].tolist() == pytest.approx([0.8], abs=1e-6)
    assert got.biases[("w2", 4)].tolist() == pytest.approx([0.015], abs=1e-6)
    assert seen == [[], [], ["w1"]]  # the network's cache id, the walk's start (unrounded); gemm1's bias reaches it before gemm2
