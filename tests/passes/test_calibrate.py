"""calibrate: one encoding per (tensor, bits) the candidates need, on the right axis and grid."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import numpy_helper

from onnxmp import hw_profile
from onnxmp.calib_data import CalibrationSet
from onnxmp.passes.calibrate import calibrate
from onnxmp.passes.quantizer_groups import quantizer_groups
from onnxmp.records import Granularity, Grid, RangeMethod, TensorEncoding
from tests import builders, oracles

# float_fallbacks reads a weight as a graph input without a batch dim: it cannot be calibrated
CALIBRATABLE = [name for name in builders.BUILDERS if name != "float_fallbacks"]


def _calibrate(model, profile="npu", *, method=RangeMethod.MSE, batch_size=16, samples=14):
    canon = builders.canonical(model)
    prof = (
        profile if isinstance(profile, hw_profile.HwProfile) else hw_profile.load_profile(profile)
    )
    analysis = quantizer_groups(canon.graph, prof)
    calib = CalibrationSet(builders.feeds_for(canon.model, batch=samples, seed=1))
    encodings = calibrate(
        canon.model,
        canon.graph,
        analysis,
        calib,
        profile=prof,
        method=method,
        batch_size=batch_size,
    )
    return canon, analysis, calib, encodings


@pytest.mark.parametrize("name", CALIBRATABLE)
def test_an_encoding_for_every_tensor_and_width_the_candidates_need(name):
    _, analysis, _, encodings = _calibrate(builders.BUILDERS[name](), "research")
    needed = set()
    for group in analysis.groups:
        for candidate in group.candidates:
            needed.update((w, candidate.w_bits) for w in group.weights)
            needed.update((t, candidate.a_bits) for t in group.activations)
    assert set(encodings) == needed
    for (tensor, bits), encoding in encodings.items():
        assert (encoding.name, encoding.bits) == (tensor, bits)
        assert all(s > 0 for s in encoding.scale)
        assert all(encoding.qmin <= z <= encoding.qmax for z in encoding.zero_point)


def test_conv_weight_is_per_channel_on_axis_0():
    # minmax, 8 bits: scale[c] = max |w[c]| / 127
    _, _, _, encodings = _calibrate(builders.conv_relu(), method=RangeMethod.MINMAX)
    w = builders.conv_relu().graph.initializer[0]
    assert w.name == "w"
    values = numpy_helper.to_array(w)
    encoding = encodings[("w", 8)]
    assert (encoding.axis, encoding.signed, encoding.symmetric) == (0, True, True)
    assert encoding.zero_point == (0, 0, 0, 0)
    np.testing.assert_allclose(
        encoding.scale, np.abs(values).reshape(4, -1).max(axis=1) / 127, rtol=1e-6
    )
    assert (encoding.qmin, encoding.qmax) == (-127, 127)
    assert encodings[("w", 4)].axis == 0
    assert len(encodings[("w", 4)].scale) == 4


@pytest.mark.parametrize(("trans_b", "axis"), [(True, 0), (False, 1)])
def test_gemm_weight_axis_is_the_output_channel(trans_b, axis):
    canon, _, _, encodings = _calibrate(
        builders.gemm_bn(trans_b=trans_b), method=RangeMethod.MINMAX
    )
    weight = canon.graph.nodes["fc"].input[1]
    values = canon.graph.constant(weight)
    encoding = encodings[(weight, 8)]
    assert encoding.axis == axis
    assert len(encoding.scale) == 4  # the Gemm has 4 outputs either way
    np.testing.assert_allclose(encoding.scale, np.abs(values).max(axis=1 - axis) / 127, rtol=1e-6)


def test_matmul_weight_axis_is_the_last():
    _, _, _, encodings = _calibrate(builders.matmul_act_act())
    assert encodings[("w_q", 8)].axis == 1
    assert len(encodings[("w_q", 8)].scale) == 8


@pytest.mark.parametrize(
    ("name", "tensor"), [("flatten_gemm", "r"), ("depthwise", "r"), ("residual_add", "r1")]
)
def test_relu_output_has_zero_point_0(name, tensor):
    canon, _, calib, encodings = _calibrate(builders.BUILDERS[name](), "research")
    bits = sorted(b for t, b in encodings if t == tensor)
    assert bits == [4, 6, 8, 16]
    assert all(encodings[(tensor, b)].zero_point == (0,) for b in bits)
    # minmax at 8 bits: [0, max] on 255 steps
    _, _, _, minmax = _calibrate(builders.BUILDERS[name](), method=RangeMethod.MINMAX)
    observed = oracles.run(oracles.with_outputs(canon.model, [tensor]), calib.arrays)[tensor]
    assert observed.min() == 0.0
    assert minmax[(tensor, 8)].scale[0] == pytest.approx(float(observed.max()) / 255, rel=1e-6)


def test_mse_ranges_narrow_with_fewer_bits():
    # a Gaussian input: the MSE range (scale x levels) shrinks as the grid gets coarser
    _, _, _, encodings = _calibrate(builders.conv_relu(), "research", samples=32)
    ranges = [encodings[("x", b)].scale[0] * (2**b - 1) for b in (16, 8, 6, 4)]
    assert ranges == sorted(ranges, reverse=True)
    assert ranges[-1] < 0.8 * ranges[0]


def test_results_do_not_depend_on_the_batch_size():
    one = _calibrate(builders.residual_add(), "research", batch_size=1)[3]
    seven = _calibrate(builders.residual_add(), "research", batch_size=7)[3]
    assert dict(one) == dict(seven)


def test_per_tensor_and_symmetric_schemes():
    base = hw_profile.load_profile("npu")
    profile = hw_profile.HwProfile(
        name="flat",
        kernels=base.kernels,
        quantized_ops=base.quantized_ops,
        passthrough_ops=base.passthrough_ops,
        weight_granularity=Granularity.PER_TENSOR,
        activation_symmetric=True,
    )
    _, _, _, encodings = _calibrate(builders.flatten_gemm(), profile)
    assert encodings[("fc_w", 8)].axis is None
    assert len(encodings[("fc_w", 8)].scale) == 1
    act = encodings[("x", 8)]
    assert (act.signed, act.symmetric, act.zero_point, act.qmin, act.qmax) == (
        True,
        True,
        (0,),
        -127,
        127,
    )


def test_softmax_output_takes_the_unit_interval_without_statistics():
    # p = Softmax(...) lies in [0, 1]: uint8 scale 1/255, zero point 0, whatever the data
    canon = builders.canonical(builders.attention_block())
    profile = hw_profile.load_profile("npu")
    analysis = quantizer_groups(canon.graph, profile)
    calib = CalibrationSet(builders.feeds_for(canon.model, batch=4))
    encodings = calibrate(canon.model, canon.graph, analysis, calib, profile=profile)
    expected = TensorEncoding("p", 8, (float(np.float32(1 / 255)),), (0,), grid=Grid.ASYMMETRIC_UNSIGNED)
    assert encodings[("p", 8)] == expected  # the scale is stored as float32
    assert encodings[("p", 16)].scale == pytest.approx((1 / 65535,))
    assert encodings[("p", 16)].zero_point == (0,)


def test_inputs_that_overflow_an_activation_name_it():
    from onnxmp.errors import CalibrationError

    # residual_add: x ─ conv1 ─► c1 ─ relu1 ─► r1 ─ conv2, add; x near float32's limit makes
    # conv1's sums (36 terms of +-3e38 * w) overflow, and r1 is the first quantized tensor to hold inf
    canon = builders.canonical(builders.residual_add())
    prof = hw_profile.load_profile("npu")
    analysis = quantizer_groups(canon.graph, prof)
    feeds = builders.feeds_for(canon.model, batch=4, seed=1)
    huge = np.full_like(feeds["x"], 3e38)
    assert np.isfinite(huge).all()
    with pytest.raises(CalibrationError, match=r"^calibration data: tensor 'r1' overflows float32 \(range 0.0\.\.inf\)"):
        calibrate(canon.model, canon.graph, analysis, CalibrationSet({"x": huge}), profile=prof)
