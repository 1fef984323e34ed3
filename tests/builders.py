"""Tiny ONNX models for the tests, one function each, topology in ONNX text syntax.

Every builder returns a fresh `onnx.ModelProto` (opset 17, ir_version 8, batch dim "N")
whose weights come from a seeded `np.random.default_rng`, so two calls give identical
bytes. Node names are written in the text (`[name] out = Op(...)`) because the expected
quantizer groups in the tests are spelled with them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import onnx
import onnx.parser
from onnx import helper, numpy_helper

from onnxmp import graph as graph_index
from onnxmp import passes
from onnxmp.large_model import SizeLimits

HEADER = '<ir_version: 8, opset_import: ["" : 17]>'


def _model(body: str, weights: Mapping[str, np.ndarray]) -> onnx.ModelProto:
    """Parse `HEADER + body` and add `weights` as initializers."""
    model = onnx.parser.parse_model(HEADER + "\n" + body)
    model.graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in weights.items())
    return model


def _randn(rng: np.random.Generator, *shape: int, scale: float = 0.5) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def _literal(values: np.ndarray) -> str:
    """A float tensor literal for the text syntax (repr round-trips float32 exactly)."""
    dims = ",".join(str(d) for d in values.shape)
    return f"float[{dims}] {{{', '.join(repr(float(v)) for v in values.ravel())}}}"


def conv_relu(seed: int = 0) -> onnx.ModelProto:
    #   x[N,3,8,8] ─ conv(w[4,3,3,3], b[4], pads 1) ─► c ─ relu ─► y[N,4,8,8]
    rng = np.random.default_rng(seed)
    return _model(
        """
        g (float[N,3,8,8] x) => (float[N,4,8,8] y) {
            [conv] c = Conv <pads = [1, 1, 1, 1]> (x, w, b)
            [relu] y = Relu (c)
        }""",
        {"w": _randn(rng, 4, 3, 3, 3), "b": _randn(rng, 4)},
    )


def _bn_params(rng: np.random.Generator, channels: int) -> dict[str, np.ndarray]:
    return {
        "gamma": (1 + _randn(rng, channels, scale=0.2)),
        "beta": _randn(rng, channels, scale=0.2),
        "mean": _randn(rng, channels, scale=0.2),
        "var": rng.uniform(0.5, 2.0, channels).astype(np.float32),
    }


def conv_bn(seed: int = 0) -> onnx.ModelProto:
    #   x[N,3,8,8] ─ conv(w, b, pads 1) ─► c ─ bn(gamma, beta, mean, var) ─► n ─ relu ─► y[N,4,8,8]
    rng = np.random.default_rng(seed)
    return _model(
        """
        g (float[N,3,8,8] x) => (float[N,4,8,8] y) {
            [conv] c = Conv <pads = [1, 1, 1, 1]> (x, w, b)
            [bn] n = BatchNormalization <epsilon = 0.001> (c, gamma, beta, mean, var)
            [relu] y = Relu (n)
        }""",
        {"w": _randn(rng, 4, 3, 3, 3), "b": _randn(rng, 4), **_bn_params(rng, 4)},
    )


def gemm_bn(seed: int = 0, *, trans_b: bool = True) -> onnx.ModelProto:
    #   x[N,8] ─ fc(w, b) ─► g ─ bn ─► n ─ relu ─► y[N,4]
    #   w is [4,8] with transB=1, [8,4] with transB=0
    rng = np.random.default_rng(seed)
    w = _randn(rng, 4, 8) if trans_b else _randn(rng, 8, 4)
    return _model(
        f"""
        g (float[N,8] x) => (float[N,4] y) {{
            [fc] g = Gemm <transB = {int(trans_b)}> (x, w, b)
            [bn] n = BatchNormalization (g, gamma, beta, mean, var)
            [relu] y = Relu (n)
        }}""",
        {"w": w, "b": _randn(rng, 4), **_bn_params(rng, 4)},
    )


def conv_bn_shared(seed: int = 0) -> onnx.ModelProto:
    #                                      ┌─ bn ─► n ──┐
    #   x[N,3,6,6] ─ conv(w, pads 1) ─► c ─┤            add ─► y[N,4,6,6]
    #                                      └─ relu ─► r ┘
    #   (c has two consumers, so the BN cannot be folded into the conv)
    rng = np.random.default_rng(seed)
    return _model(
        """
        g (float[N,3,6,6] x) => (float[N,4,6,6] y) {
            [conv] c = Conv <pads = [1, 1, 1, 1]> (x, w)
            [bn] n = BatchNormalization (c, gamma, beta, mean, var)
            [relu] r = Relu (c)
            [add] y = Add (n, r)
        }""",
        {"w": _randn(rng, 4, 3, 3, 3), **_bn_params(rng, 4)},
    )


def conv_bn_output(seed: int = 0) -> onnx.ModelProto:
    #   x[N,3,6,6] ─ conv(w, pads 1) ─► c ─ bn ─► y[N,4,6,6]
    #                                   └──────► c is also a graph output
    rng = np.random.default_rng(seed)
    return _model(
        """
        g (float[N,3,6,6] x) => (float[N,4,6,6] y, float[N,4,6,6] c) {
            [conv] c = Conv <pads = [1, 1, 1, 1]> (x, w)
            [bn] y = BatchNormalization (c, gamma, beta, mean, var)
        }""",
        {"w": _randn(rng, 4, 3, 3, 3), **_bn_params(rng, 4)},
    )


def shared_weight_conv_bn(seed: int = 0) -> onnx.ModelProto:
    #   x1[N,3,6,6] ─ conv1(w) ─► c1 ─ bn1 ─► y1
    #   x2[N,3,6,6] ─ conv2(w) ─► c2 ─ bn2 ─► y2     (one weight initializer, two BNs)
    rng = np.random.default_rng(seed)
    bn1 = {f"{k}1": v for k, v in _bn_params(rng, 4).items()}
    bn2 = {f"{k}2": v for k, v in _bn_params(rng, 4).items()}
    return _model(
        """
        g (float[N,3,6,6] x1, float[N,3,6,6] x2) => (float[N,4,6,6] y1, float[N,4,6,6] y2) {
            [conv1] c1 = Conv <pads = [1, 1, 1, 1]> (x1, w)
            [bn1] y1 = BatchNormalization (c1, gamma1, beta1, mean1, var1)
            [conv2] c2 = Conv <pads = [1, 1, 1, 1]> (x2, w)
            [bn2] y2 = BatchNormalization (c2, gamma2, beta2, mean2, var2)
        }""",
        {"w": _randn(rng, 4, 3, 3, 3), **bn1, **bn2},
    )


def residual_add(seed: int = 0) -> onnx.ModelProto:
    #   x[N,4,6,6] ─ conv1(w1) ─► c1 ─ relu1 ─► r1 ─┬─ conv2(w2) ─► c2 ─┐
    #                                              └───────────────────add ─► y[N,4,6,6]
    rng = np.random.default_rng(seed)
    return _model(
        """
        g (float[N,4,6,6] x) => (float[N,4,6,6] y) {
            [conv1] c1 = Conv <pads = [1, 1, 1, 1]> (x, w1, b1)
            [relu1] r1 = Relu (c1)
            [conv2] c2 = Conv <pads = [1, 1, 1, 1]> (r1, w2, b2)
            [add] y = Add (r1, c2)
        }""",
        {
            "w1": _randn(rng, 4, 4, 3, 3),
            "b1": _randn(rng, 4),
            "w2": _randn(rng, 4, 4, 3, 3),
            "b2": _randn(rng, 4),
        },
    )


def conv_chain3(seed: int = 0) -> onnx.ModelProto:
    #   x[N,2,5,5] ─ conv1 ─ relu1 ─► r1 ─ conv2 ─ relu2 ─► r2 ─ conv3 ─► y[N,2,5,5]: three groups, two borders
    rng = np.random.default_rng(seed)
    return _model(
        """
        g (float[N,2,5,5] x) => (float[N,2,5,5] y) {
            [conv1] c1 = Conv <pads = [1, 1, 1, 1]> (x, w1, b1)
            [relu1] r1 = Relu (c1)
            [conv2] c2 = Conv <pads = [1, 1, 1, 1]> (r1, w2, b2)
            [relu2] r2 = Relu (c2)
            [conv3] y = Conv <pads = [1, 1, 1, 1]> (r2, w3, b3)
        }""",
        {name: _randn(rng, *shape) for name, shape in
         [("w1", (2, 2, 3, 3)), ("b1", (2,)), ("w2", (2, 2, 3, 3)), ("b2", (2,)), ("w3", (2, 2, 3, 3)), ("b3", (2,))]},
    )


def concat_branches(seed: int = 0) -> onnx.ModelProto:
    #               ┌─ conv_a(w_a 1x1) ─► ca ─ relu_a ─► a ─┐
    #   x[N,3,6,6] ─┤                                       concat ─► cat[N,6,6,6] ─ conv_c(w_c) ─► y[N,2,6,6]
    #               └─ conv_b(w_b 3x3, pads 1) ─► b ────────┘
    rng = np.random.default_rng(seed)
    return _model(
        """
        g (float[N,3,6,6] x) => (float[N,2,6,6] y) {
            [conv_a] ca = Conv (x, w_a)
            [relu_a] a = Relu (ca)
            [conv_b] b = Conv <pads = [1, 1, 1, 1]> (x, w_b)
            [concat] cat = Concat <axis = 1> (a, b)
            [conv_c] y = Conv (cat, w_c)
        }""",
        {
            "w_a": _randn(rng, 2, 3, 1, 1),
            "w_b": _randn(rng, 4, 3, 3, 3),
            "w_c": _randn(rng, 2, 6, 1, 1),
        },
    )


def flatten_gemm(seed: int = 0) -> onnx.ModelProto:
    #   x[N,3,4,4] ─ conv(w, pads 1) ─► c ─ relu ─► r[N,2,4,4] ─ flatten ─► f[N,32] ─ fc(fc_w[5,32], transB=1) ─► y[N,5]
    rng = np.random.default_rng(seed)
    return _model(
        """
        g (float[N,3,4,4] x) => (float[N,5] y) {
            [conv] c = Conv <pads = [1, 1, 1, 1]> (x, w)
            [relu] r = Relu (c)
            [flatten] f = Flatten <axis = 1> (r)
            [fc] y = Gemm <transB = 1> (f, fc_w, fc_b)
        }""",
        {
            "w": _randn(rng, 2, 3, 3, 3),
            "fc_w": _randn(rng, 5, 32, scale=0.2),
            "fc_b": _randn(rng, 5),
        },
    )


def shared_input_two_convs(seed: int = 0) -> onnx.ModelProto:
    #               ┌─ conv1(w1 1x1) ─► y1[N,2,5,5]
    #   x[N,3,5,5] ─┤
    #               └─ conv2(w2 3x3, pads 1) ─► y2[N,3,5,5]
    rng = np.random.default_rng(seed)
    return _model(
        """
        g (float[N,3,5,5] x) => (float[N,2,5,5] y1, float[N,3,5,5] y2) {
            [conv1] y1 = Conv (x, w1)
            [conv2] y2 = Conv <pads = [1, 1, 1, 1]> (x, w2)
        }""",
        {"w1": _randn(rng, 2, 3, 1, 1), "w2": _randn(rng, 3, 3, 3, 3)},
    )


def depthwise(seed: int = 0) -> onnx.ModelProto:
    #   x[N,4,6,6] ─ dw(w_dw[4,1,3,3], group 4, pads 1) ─► d ─ relu ─► r ─ pw(w_pw[8,4,1,1]) ─► y[N,8,6,6]
    rng = np.random.default_rng(seed)
    return _model(
        """
        g (float[N,4,6,6] x) => (float[N,8,6,6] y) {
            [dw] d = Conv <group = 4, pads = [1, 1, 1, 1]> (x, w_dw, b_dw)
            [relu] r = Relu (d)
            [pw] y = Conv (r, w_pw)
        }""",
        {"w_dw": _randn(rng, 4, 1, 3, 3), "b_dw": _randn(rng, 4), "w_pw": _randn(rng, 8, 4, 1, 1)},
    )


def matmul_act_act(seed: int = 0) -> onnx.ModelProto:
    #             ┌─ mm_q(w_q[8,8]) ─► q[N,4,8] ─────────────────────────────────────┐
    #   x[N,4,8] ─┤                                                                  mm_qk ─► s[N,4,4]
    #             └─ mm_k(w_k[8,8]) ─► k[N,4,8] ─ transpose(0,2,1) ─► kt[N,8,4] ─────┘
    rng = np.random.default_rng(seed)
    return _model(
        """
        g (float[N,4,8] x) => (float[N,4,4] s) {
            [mm_q] q = MatMul (x, w_q)
            [mm_k] k = MatMul (x, w_k)
            [transpose] kt = Transpose <perm = [0, 2, 1]> (k)
            [mm_qk] s = MatMul (q, kt)
        }""",
        {"w_q": _randn(rng, 8, 8), "w_k": _randn(rng, 8, 8)},
    )


def constant_weight_conv(seed: int = 0) -> onnx.ModelProto:
    #   cst: Constant(float[2,3,1,1]) ─► w
    #   x[N,3,4,4] ─ conv(w) ─► y[N,2,4,4]
    rng = np.random.default_rng(seed)
    return _model(
        f"""
        g (float[N,3,4,4] x) => (float[N,2,4,4] y) {{
            [cst] w = Constant <value = {_literal(_randn(rng, 2, 3, 1, 1))}> ()
            [conv] y = Conv (x, w)
        }}""",
        {},
    )


def pad_shape_chain(seed: int = 0) -> onnx.ModelProto:
    #   TF-"same" padding as torch.onnx.export writes it (F.pad(x, [0, 1, 0, 1])):
    #   Constant(4) ─ ConstantOfShape ─► zeros[4] ─┐
    #   Constant([0,1,0,1]) ───────────────────────concat_pads ─► [0,1,0,1,0,0,0,0]
    #     ─ reshape_pairs([-1,2]) ─ slice_rev(rows reversed) ─ transpose_pads ─ reshape_flat([-1])
    #     ─ cast_pads(int64) ─► pads = [0,0,0,0,0,0,1,1]
    #   x[N,3,8,8] ─ pad(pads) ─► xp[N,3,9,9] ─ conv(w, b, stride 2) ─► y[N,4,4,4]
    rng = np.random.default_rng(seed)
    return _model(
        """
        g (float[N,3,8,8] x) => (float[N,4,4,4] y) {
            [c_four] four = Constant <value = int64[1] {4}> ()
            [zeros] zeros = ConstantOfShape <value = int64[1] {0}> (four)
            [c_tf] tf_pads = Constant <value = int64[4] {0, 1, 0, 1}> ()
            [concat_pads] all_pads = Concat <axis = 0> (tf_pads, zeros)
            [c_pairs] pairs_shape = Constant <value = int64[2] {-1, 2}> ()
            [reshape_pairs] pairs = Reshape (all_pads, pairs_shape)
            [c_starts] starts = Constant <value = int64[1] {-1}> ()
            [c_ends] ends = Constant <value = int64[1] {-9223372036854775807}> ()
            [c_axes] axes = Constant <value = int64[1] {0}> ()
            [c_steps] steps = Constant <value = int64[1] {-1}> ()
            [slice_rev] rev = Slice (pairs, starts, ends, axes, steps)
            [transpose_pads] cols = Transpose <perm = [1, 0]> (rev)
            [c_flat] flat_shape = Constant <value = int64[1] {-1}> ()
            [reshape_flat] flat = Reshape (cols, flat_shape)
            [cast_pads] pads = Cast <to = 7> (flat)
            [pad] xp = Pad <mode = "constant"> (x, pads)
            [conv] y = Conv <strides = [2, 2]> (xp, w, b)
        }""",
        {"w": _randn(rng, 4, 3, 3, 3), "b": _randn(rng, 4)},
    )


def float_fallbacks(seed: int = 0) -> onnx.ModelProto:
    #   x[N,3,4,4] ─ conv(w) ─► c ─ relu ─► r ─┬─ softmax ─► s           (op not in the profile)
    #                                          └─ resize(linear) ─► u    (interpolates)
    #   x, wd[2,3,1,1] (graph input) ─ conv_dyn ─► d                    (weight not a constant)
    #   x ─ shape ─► sh[int64] ─ add_int(one) ─► k                       (no float inputs)
    rng = np.random.default_rng(seed)
    return _model(
        """
        g (float[N,3,4,4] x, float[2,3,1,1] wd) => (float[N,2,4,4] s, float[N,2,8,8] u, float[N,2,4,4] d, int64[4] k) {
            [conv] c = Conv (x, w)
            [relu] r = Relu (c)
            [softmax] s = Softmax <axis = 1> (r)
            [resize] u = Resize <mode = "linear"> (r, , scales)
            [conv_dyn] d = Conv (x, wd)
            [shape] sh = Shape (x)
            [add_int] k = Add (sh, one)
        }""",
        {
            "w": _randn(rng, 2, 3, 1, 1),
            "scales": np.array([1, 1, 2, 2], np.float32),
            "one": np.array([1], np.int64),
        },
    )


def conv_geometry(*, stride: int, pad: int, dilation: int, group: int) -> onnx.ModelProto:
    #   x[N,4,10,10] ─ conv(w[6, 4/group, 3, 3], strides, pads, dilations, group) ─► y
    rng = np.random.default_rng(0)
    return _model(
        f"""
        g (float[N,4,10,10] x) => (float[N,6,?,?] y) {{
            [conv] y = Conv <strides = [{stride}, {stride}], pads = [{pad}, {pad}, {pad}, {pad}],
                             dilations = [{dilation}, {dilation}], group = {group}> (x, w)
        }}""",
        {"w": _randn(rng, 6, 4 // group, 3, 3)},
    )


def conv_transpose(seed: int = 0) -> onnx.ModelProto:
    #   x[N,4,5,5] ─ up(w[4,2,3,3], stride 2) ─► y[N,2,11,11]
    rng = np.random.default_rng(seed)
    return _model(
        """
        g (float[N,4,5,5] x) => (float[N,2,11,11] y) {
            [up] y = ConvTranspose <strides = [2, 2]> (x, w)
        }""",
        {"w": _randn(rng, 4, 2, 3, 3)},
    )


def conv_transpose_geometry(*, stride: int, pad: int, dilation: int, group: int, output_padding: int) -> onnx.ModelProto:
    #   x[N,4,5,5] ─ up(w[4, 6/group, 3, 3], strides, pads, dilations, group, output_padding) ─► y
    rng = np.random.default_rng(0)
    return _model(
        f"""
        g (float[N,4,5,5] x) => (float[N,6,?,?] y) {{
            [up] y = ConvTranspose <strides = [{stride}, {stride}], pads = [{pad}, {pad}, {pad}, {pad}],
                                    dilations = [{dilation}, {dilation}], group = {group},
                                    output_padding = [{output_padding}, {output_padding}]> (x, w)
        }}""",
        {"w": _randn(rng, 4, 6 // group, 3, 3)},
    )


def conv1d(seed: int = 0) -> onnx.ModelProto:
    #   x[N,3,12] ─ conv(w[5,3,3], stride 2, pads 1) ─► y[N,5,6]
    rng = np.random.default_rng(seed)
    return _model(
        """
        g (float[N,3,12] x) => (float[N,5,6] y) {
            [conv] y = Conv <strides = [2], pads = [1, 1]> (x, w)
        }""",
        {"w": _randn(rng, 5, 3, 3)},
    )


def gemm_matmul(seed: int = 0) -> onnx.ModelProto:
    #   x[N,6] ─ gemm(w_g[6,5], transB 0) ─► h[N,5] ─ mm(w_m[5,3]) ─► y[N,3]
    rng = np.random.default_rng(seed)
    return _model(
        """
        g (float[N,6] x) => (float[N,3] y) {
            [gemm] h = Gemm (x, w_g)
            [mm] y = MatMul (h, w_m)
        }""",
        {"w_g": _randn(rng, 6, 5), "w_m": _randn(rng, 5, 3)},
    )


def batched_matmul(seed: int = 0) -> onnx.ModelProto:
    #   x[N,2,3,5] ─ mm(w[2,5,7], broadcast over N) ─► y[N,2,3,7]
    rng = np.random.default_rng(seed)
    return _model(
        """
        g (float[N,2,3,5] x) => (float[N,2,3,7] y) {
            [mm] y = MatMul (x, w)
        }""",
        {"w": _randn(rng, 2, 5, 7)},
    )


# Literal registry of the builders every contract test runs on.
def attention_block(seed: int = 0) -> onnx.ModelProto:
    """One single-head encoder block as a BERT export writes it (onnx.helper, opset 17).

    Inputs x[N,S,8] float and mask[N,S] int64 (1 = token, 0 = padding); output y[N,S,8].

      mask ─ mask_unsqueeze ─ mask_cast ─ mask_sub(1 - m) ─ mask_mul(x -10000) ─► mask_bias[N,1,S]
           ┌─ q_mm(w_q) ─ q_add(b_q) ─► q ─────────────────────────┐
      x ───┼─ k_mm(w_k) ─ k_add(b_k) ─► k ─ k_t(perm 0,2,1) ─► kt ─ qk ─► s0 ─ scale(/ sqrt 8) ─► s1
           └─ v_mm(w_v) ─ v_add(b_v) ─► v ─────────────┐            s1 + mask_bias ─ mask_add ─► s2
                                  s2 ─ softmax ─► p ─ pv ─► a ─ o_mm(w_o) ─ o_add(b_o) ─► o
      o + x ─ residual ─► r ─ ln(gamma, beta) ─► h ─ ff_mm(w_f) ─ ff_add(b_f) ─► f
      f ─ gelu/Div(/ sqrt 2) ─ gelu/Erf ─ gelu/Add(+ 1) ─ gelu/Mul(f x) ─ gelu/Mul_1(x 0.5) ─► g
      g ─ out_mm(w_2) ─ out_add(b_2) ─► y
    """
    rng = np.random.default_rng(seed)
    weights = {
        "w_q": _randn(rng, 8, 8), "b_q": _randn(rng, 8), "w_k": _randn(rng, 8, 8), "b_k": _randn(rng, 8),
        "w_v": _randn(rng, 8, 8), "b_v": _randn(rng, 8), "w_o": _randn(rng, 8, 8), "b_o": _randn(rng, 8),
        "gamma": 1 + _randn(rng, 8, scale=0.1), "beta": _randn(rng, 8, scale=0.1),
        "w_f": _randn(rng, 8, 16), "b_f": _randn(rng, 16), "w_2": _randn(rng, 16, 8), "b_2": _randn(rng, 8),
        "one": np.float32(1.0), "big_negative": np.float32(-10000.0), "sqrt_d": np.float32(np.sqrt(8.0)),
        "sqrt_2": np.float32(np.sqrt(2.0)), "half": np.float32(0.5), "axis_1": np.array([1], np.int64),
    }
    node = helper.make_node
    nodes = [
        node("Unsqueeze", ["mask", "axis_1"], ["m1"], name="mask_unsqueeze"),
        node("Cast", ["m1"], ["m_float"], name="mask_cast", to=onnx.TensorProto.FLOAT),
        node("Sub", ["one", "m_float"], ["m_inverted"], name="mask_sub"),
        node("Mul", ["m_inverted", "big_negative"], ["mask_bias"], name="mask_mul"),
        *_dense("q", "x", "w_q", "b_q", "q"), *_dense("k", "x", "w_k", "b_k", "k"), *_dense("v", "x", "w_v", "b_v", "v"),
        node("Transpose", ["k"], ["kt"], name="k_t", perm=[0, 2, 1]),
        node("MatMul", ["q", "kt"], ["s0"], name="qk"),
        node("Div", ["s0", "sqrt_d"], ["s1"], name="scale"),
        node("Add", ["s1", "mask_bias"], ["s2"], name="mask_add"),
        node("Softmax", ["s2"], ["p"], name="softmax", axis=-1),
        node("MatMul", ["p", "v"], ["a"], name="pv"),
        *_dense("o", "a", "w_o", "b_o", "o"),
        node("Add", ["o", "x"], ["r"], name="residual"),
        node("LayerNormalization", ["r", "gamma", "beta"], ["h"], name="ln", axis=-1),
        *_dense("ff", "h", "w_f", "b_f", "f"),
        node("Div", ["f", "sqrt_2"], ["g_scaled"], name="gelu/Div"),
        node("Erf", ["g_scaled"], ["g_erf"], name="gelu/Erf"),
        node("Add", ["g_erf", "one"], ["g_plus"], name="gelu/Add"),
        node("Mul", ["f", "g_plus"], ["g_product"], name="gelu/Mul"),
        node("Mul", ["g_product", "half"], ["g"], name="gelu/Mul_1"),
        *_dense("out", "g", "w_2", "b_2", "y"),
    ]
    inputs = [
        helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", "S", 8]),
        helper.make_tensor_value_info("mask", onnx.TensorProto.INT64, ["N", "S"]),
    ]
    outputs = [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", "S", 8])]
    initializers = [numpy_helper.from_array(np.asarray(v), k) for k, v in weights.items()]
    graph = helper.make_graph(nodes, "attention_block", inputs, outputs, initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _dense(prefix: str, x: str, w: str, b: str, out: str) -> list[onnx.NodeProto]:
    """MatMul then bias Add, as exporters write a Linear layer (the bias first, as torch does)."""
    return [
        helper.make_node("MatMul", [x, w], [f"{prefix}_0"], name=f"{prefix}_mm"),
        helper.make_node("Add", [b, f"{prefix}_0"], [out], name=f"{prefix}_add"),
    ]


def position_slice_matmul(seed: int = 0) -> onnx.ModelProto:
    """The position-embedding chain of transformer exports: the sequence length reaches a
    MatMul only through Shape -> Gather -> Unsqueeze -> Slice (ONNX shape inference alone
    leaves it unknown).

      ids[N,S] ─ shape ─ seq_len(Gather 1) ─ unsqueeze ─► end
      position_ids[1,16] ─ slice(0:end on axis 1) ─► pos_ids[1,S] ─ lookup(table[16,4]) ─► e[1,S,4]
      e ─ mm(w[4,3]) ─► y[1,S,3]
    """
    rng = np.random.default_rng(seed)
    return _model(
        """
        g (int64[N,S] ids) => (float[1,S,3] y) {
            [shape] sizes = Shape (ids)
            [seq_len] n = Gather (sizes, one_index)
            [unsqueeze] end = Unsqueeze (n, zero_axes)
            [slice] pos_ids = Slice (position_ids, start, end, slice_axes)
            [lookup] e = Gather (table, pos_ids)
            [mm] y = MatMul (e, w)
        }""",
        {
            "one_index": np.array(1, np.int64), "zero_axes": np.array([0], np.int64),
            "position_ids": np.arange(16, dtype=np.int64).reshape(1, 16), "start": np.array([0], np.int64),
            "slice_axes": np.array([1], np.int64), "table": _randn(rng, 16, 4), "w": _randn(rng, 4, 3),
        },
    )


BUILDERS: dict[str, Callable[[], onnx.ModelProto]] = {
    "conv_relu": conv_relu,
    "conv_bn": conv_bn,
    "gemm_bn": gemm_bn,
    "conv_bn_shared": conv_bn_shared,
    "residual_add": residual_add,
    "concat_branches": concat_branches,
    "flatten_gemm": flatten_gemm,
    "shared_input_two_convs": shared_input_two_convs,
    "depthwise": depthwise,
    "matmul_act_act": matmul_act_act,
    "constant_weight_conv": constant_weight_conv,
    "pad_shape_chain": pad_shape_chain,
    "float_fallbacks": float_fallbacks,
    "conv_transpose": conv_transpose,
    "batched_matmul": batched_matmul,
    "attention_block": attention_block,
    "position_slice_matmul": position_slice_matmul,
    "conv1d": conv1d,
    "gemm_matmul": gemm_matmul,
}


@dataclass(frozen=True)
class Canonical:
    """A model after `passes.CANONICALIZE` and its dataflow index."""

    model: onnx.ModelProto
    graph: graph_index.DataflowGraph


def canonical(model: onnx.ModelProto, *, limits: SizeLimits | None = None) -> Canonical:
    """Run every pass of `passes.CANONICALIZE` in order (those that take them with `limits`), then index."""
    for run in passes.CANONICALIZE:
        model = run(model) if run is passes.name_nodes else run(model, limits=limits)
    return Canonical(model, graph_index.build(model))


def feeds_for(model: onnx.ModelProto, *, batch: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs for every graph input (floats normal, integers 0 or 1 like a mask); symbolic dims become `batch`."""
    rng = np.random.default_rng(seed)
    inits = {i.name for i in model.graph.initializer}
    feeds = {}
    for info in model.graph.input:
        if info.name in inits:
            continue
        dims = [
            d.dim_value if d.HasField("dim_value") else batch
            for d in info.type.tensor_type.shape.dim
        ]
        dtype = helper.tensor_dtype_to_np_dtype(info.type.tensor_type.elem_type)
        if np.issubdtype(dtype, np.integer):
            feeds[info.name] = rng.integers(0, 2, dims).astype(dtype)
        else:
            feeds[info.name] = rng.standard_normal(dims).astype(dtype)
    return feeds
