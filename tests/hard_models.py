"""Tiny models of the classes of user models that broke onnxmp (issue 9), one function each.

Same conventions as `tests/builders.py` (ONNX text syntax, seeded weights, the graph drawn as
a comment), kept apart because several are deliberately awkward: old opsets, static batch
dimensions, rank-0 inputs, a recurrent state with its batch on axis 1, If/Loop subgraphs.
`CALIBRATION` gives each one calibration data in the format `onnxmp quantize --calib` reads.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import onnx
import onnx.parser
from onnx import helper, numpy_helper


def _model(body: str, weights: Mapping[str, np.ndarray], *, opset: int = 17, ir: int = 8) -> onnx.ModelProto:
    """Parse `body` at `opset`; before IR 4 initializers must also be graph inputs."""
    model = onnx.parser.parse_model(f'<ir_version: {ir}, opset_import: ["" : {opset}]>\n{body}')
    model.graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in weights.items())
    if ir < 4:
        model.graph.input.extend(helper.make_tensor_value_info(k, onnx.TensorProto.FLOAT, v.shape) for k, v in weights.items())
    return model


def _randn(rng: np.random.Generator, *shape: int, scale: float = 0.5) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def static_batch(batch: int = 1, seed: int = 0) -> onnx.ModelProto:
    #   x[B,3,6,6] ─ conv(w, b, pads 1) ─► c ─ relu ─► r ─ flatten ─► f[B,72] ─ fc(fc_w) ─► y[B,5]
    #   B is a number (1 as most exporters write it): ORT refuses any other batch size
    rng = np.random.default_rng(seed)
    return _model(
        f"""
        g (float[{batch},3,6,6] x) => (float[{batch},5] y) {{
            [conv] c = Conv <pads = [1, 1, 1, 1]> (x, w, b)
            [relu] r = Relu (c)
            [flatten] f = Flatten <axis = 1> (r)
            [fc] y = Gemm <transB = 1> (f, fc_w, fc_b)
        }}""",
        {"w": _randn(rng, 2, 3, 3, 3), "b": _randn(rng, 2), "fc_w": _randn(rng, 5, 72, scale=0.2), "fc_b": _randn(rng, 5)},
    )


def static_batch_reshape(seed: int = 0) -> onnx.ModelProto:
    #   x[1,3,4,4] ─ conv(w) ─► c[1,2,4,4] ─ reshape(to [1,32], a constant) ─► f ─ fc(fc_w) ─► y[1,5]
    #   the constant [1, 32] pins the batch: the working copy cannot make it symbolic
    rng = np.random.default_rng(seed)
    return _model(
        """
        g (float[1,3,4,4] x) => (float[1,5] y) {
            [conv] c = Conv <pads = [1, 1, 1, 1]> (x, w)
            [reshape] f = Reshape (c, shape)
            [fc] y = Gemm <transB = 1> (f, fc_w)
        }""",
        {"w": _randn(rng, 2, 3, 3, 3), "shape": np.array([1, 32], np.int64), "fc_w": _randn(rng, 5, 32, scale=0.2)},
    )


def softmax_opset11(seed: int = 0) -> onnx.ModelProto:
    #   x[N,3,4,4] ─ conv(w 1x1) ─► c ─ softmax(axis 1, opset 11: over the flattened C,H,W) ─► y[N,4,4,4]
    #   upgrading to opset 13 adds unnamed Shape/Flatten/Reshape nodes around the Softmax
    rng = np.random.default_rng(seed)
    return _model(
        """
        g (float[N,3,4,4] x) => (float[N,4,4,4] y) {
            [conv] c = Conv (x, w)
            [softmax] y = Softmax <axis = 1> (c)
        }""",
        {"w": _randn(rng, 4, 3, 1, 1)},
        opset=11,
        ir=6,
    )


def prelu_opset6(seed: int = 0) -> onnx.ModelProto:
    #   x[N,3,5,5] ─ conv(w 1x1) ─► c[N,4,5,5] ─ prelu(slope[4], one per channel) ─► y[N,4,5,5]
    #   opset 6 PRelu broadcasts a [C] slope over the channel axis; from opset 7 the same
    #   [C] slope broadcasts numpy-style, against the last axis (5 != 4: invalid)
    rng = np.random.default_rng(seed)
    return _model(
        """
        g (float[N,3,5,5] x) => (float[N,4,5,5] y) {
            [conv] c = Conv (x, w)
            [prelu] y = PRelu (c, slope)
        }""",
        {"w": _randn(rng, 4, 3, 1, 1), "slope": np.array([0.1, 0.2, 0.3, 0.4], np.float32)},
        opset=6,
        ir=3,
    )


def scalar_io(seed: int = 0) -> onnx.ModelProto:
    #   x[N,3] ─ fc(w, b) ─► h[N,4] ─ mul(gain: a rank-0 input) ─► y[N,4] ─ reduce_sum(all) ─► total (rank 0)
    rng = np.random.default_rng(seed)
    return _model(
        """
        g (float[N,3] x, float gain) => (float[N,4] y, float total) {
            [fc] h = Gemm <transB = 1> (x, w, b)
            [mul] y = Mul (h, gain)
            [reduce_sum] total = ReduceSum <keepdims = 0> (y)
        }""",
        {"w": _randn(rng, 4, 3), "b": _randn(rng, 4)},
    )


def stateful(seed: int = 0) -> onnx.ModelProto:
    #   a streaming cell: the recurrent state keeps its batch on axis 1, the sample rate is a scalar
    #   x[N,4] ─ mm_in(w_in[4,3]) ─► h[N,3] ──────────────────────────────┐
    #   state[2,N,3] ─ reduce_state(axis 0) ─► s[N,3] ─ mm_state(w_s) ─► hs ─ add ─► a ─ relu ─► r
    #   rate (int64, rank 0) ─ cast ─► rate_f ─ div(16000) ─► gain ─ mul(r) ─► y[N,3]
    #   r, s ─ unsqueeze(0) each ─ concat(axis 0) ─► state_out[2,N,3]
    rng = np.random.default_rng(seed)
    return _model(
        """
        g (float[N,4] x, float[2,N,3] state, int64 rate) => (float[N,3] y, float[2,N,3] state_out) {
            [mm_in] h = MatMul (x, w_in)
            [reduce_state] s = ReduceSum <keepdims = 0> (state, zero)
            [mm_state] hs = MatMul (s, w_s)
            [add] a = Add (h, hs)
            [relu] r = Relu (a)
            [cast] rate_f = Cast <to = 1> (rate)
            [div] gain = Div (rate_f, base_rate)
            [mul] y = Mul (r, gain)
            [unsqueeze_r] r0 = Unsqueeze (r, zero)
            [unsqueeze_s] s0 = Unsqueeze (s, zero)
            [concat] state_out = Concat <axis = 0> (r0, s0)
        }""",
        {
            "w_in": _randn(rng, 4, 3),
            "w_s": _randn(rng, 3, 3),
            "zero": np.array([0], np.int64),
            "base_rate": np.array(16000.0, np.float32),
        },
    )


def if_branch(seed: int = 0) -> onnx.ModelProto:
    #   x[N,3,4,4] ─┬─ conv1(w1) ─► c     (c is read only inside the branches)
    #               └─ reduce_mean ─► m ─ greater(0) ─► cond
    #   if(cond): then r = Relu(c)   else r = Neg(c)   ─► r[N,2,4,4] ─ conv2(w2) ─► y[N,2,4,4]
    #   c's only readers sit inside the If subgraphs: the quantizer on c must not leave an empty suffix
    rng = np.random.default_rng(seed)
    return _model(
        """
        g (float[N,3,4,4] x) => (float[N,2,4,4] y) {
            [conv1] c = Conv <pads = [1, 1, 1, 1]> (x, w1)
            [reduce_mean] m = ReduceMean <keepdims = 0> (x)
            [greater] cond = Greater (m, zero_f)
            [if] r = If (cond) <
                then_branch = then_g () => (float[N,2,4,4] t) { [then_relu] t = Relu (c) },
                else_branch = else_g () => (float[N,2,4,4] e) { [else_neg] e = Neg (c) }
            >
            [conv2] y = Conv <pads = [1, 1, 1, 1]> (r, w2)
        }""",
        {"w1": _randn(rng, 2, 3, 3, 3), "w2": _randn(rng, 2, 2, 3, 3), "zero_f": np.array(0.0, np.float32)},
    )


def loop_body(seed: int = 0) -> onnx.ModelProto:
    #   x[N,4] ─ fc1(w1) ─► h[N,4]
    #   loop(2 times, carried v = h): v = Add(v, h)   (the body reads the outer h) ─► v_out[N,4]
    #   v_out ─ fc2(w2) ─► y[N,3]
    rng = np.random.default_rng(seed)
    return _model(
        """
        g (float[N,4] x) => (float[N,3] y) {
            [fc1] h = MatMul (x, w1)
            [loop] v_out = Loop (trips, , h) <
                body = loop_g (int64 i, bool cond_in, float[N,4] v) => (bool cond_out, float[N,4] v_next) {
                    [body_cond] cond_out = Identity (cond_in)
                    [body_add] v_next = Add (v, h)
                }
            >
            [fc2] y = MatMul (v_out, w2)
        }""",
        {"w1": _randn(rng, 4, 4), "w2": _randn(rng, 4, 3), "trips": np.array(2, np.int64)},
    )


def nothing_to_quantize(seed: int = 0) -> onnx.ModelProto:
    #   x[N,4] ─ softmax ─► y[N,4]      (no op of the npu profile: zero quantizer groups)
    del seed
    return _model(
        """
        g (float[N,4] x) => (float[N,4] y) {
            [softmax] y = Softmax <axis = 1> (x)
        }""",
        {},
    )


def dynamic_sequence(seed: int = 0) -> onnx.ModelProto:
    #   x[N,S,8] ─ mm(w[8,6]) ─► y[N,S,6]       (S is symbolic: MACs depend on the data)
    rng = np.random.default_rng(seed)
    return _model(
        """
        g (float[N,S,8] x) => (float[N,S,6] y) {
            [mm] y = MatMul (x, w)
        }""",
        {"w": _randn(rng, 8, 6)},
    )


def _calib(seed: int, **shapes: tuple[int, ...]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}


# Calibration data for each model, as `onnxmp quantize --calib` reads it (samples on axis 0
# unless `sample_axis/<input>` says otherwise; a rank-0 array is one value for every sample).
CALIBRATION: dict[str, Callable[[], dict[str, np.ndarray]]] = {
    "static_batch": lambda: _calib(1, x=(20, 3, 6, 6)),
    "static_batch_reshape": lambda: _calib(1, x=(20, 3, 4, 4)),
    "softmax_opset11": lambda: _calib(1, x=(20, 3, 4, 4)),
    "prelu_opset6": lambda: _calib(1, x=(20, 3, 5, 5)),
    "scalar_io": lambda: {**_calib(1, x=(20, 3)), "gain": np.array(1.5, np.float32)},
    "stateful": lambda: {
        **_calib(1, x=(20, 4), state=(2, 20, 3)),
        "rate": np.array(16000, np.int64),
        "sample_axis/state": np.array(1, np.int64),
    },
    "if_branch": lambda: _calib(1, x=(20, 3, 4, 4)),
    "loop_body": lambda: _calib(1, x=(20, 4)),
    "nothing_to_quantize": lambda: _calib(1, x=(20, 4)),
    "dynamic_sequence": lambda: _calib(1, x=(20, 7, 8)),
}

HARD_MODELS: dict[str, Callable[[], onnx.ModelProto]] = {
    "static_batch": static_batch,
    "static_batch_reshape": static_batch_reshape,
    "softmax_opset11": softmax_opset11,
    "prelu_opset6": prelu_opset6,
    "scalar_io": scalar_io,
    "stateful": stateful,
    "if_branch": if_branch,
    "loop_body": loop_body,
    "nothing_to_quantize": nothing_to_quantize,
    "dynamic_sequence": dynamic_sequence,
}
