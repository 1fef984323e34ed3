"""quant_math: hand-computed quantizers, round-trip bounds and range searches."""

from __future__ import annotations

import math

import numpy as np
import pytest

from onnxmp import quant_math
from tests import oracles


def test_symmetric_int8_by_hand():
    # x = [-1, 0.5, 2], symmetric int8 on [-127, 127]: scale = max|x| / 127 = 2/127.
    # x / scale = [-63.5, 31.75, 127]; round half to even -> [-64, 32, 127].
    # dequantized = [-128/127, 64/127, 254/127] = [-1.007874, 0.503937, 2.0].
    # signal = 1 + 0.25 + 4 = 5.25; noise = (1/127)^2 + (0.5/127)^2 = 1.25/16129;
    # SQNR = 10 log10(5.25 * 16129 / 1.25) = 10 log10(67741.8) = 48.3086 dB.
    x = np.array([-1.0, 0.5, 2.0])
    scale = quant_math.symmetric_scale(2.0, 8)
    assert scale == np.float32(2 / 127)
    x_int = quant_math.quantize(x, scale, 0, -127, 127)
    assert x_int.tolist() == [-64, 32, 127]
    x_hat = quant_math.dequantize(x_int, scale, 0)
    assert x_hat.dtype == np.float32
    np.testing.assert_allclose(x_hat, [-128 / 127, 64 / 127, 254 / 127], rtol=1e-6)
    signal, noise = quant_math.signal_and_noise(x, x_hat)
    assert signal == 5.25
    assert noise == pytest.approx(1.25 / 127**2, rel=1e-5)
    assert 10 * math.log10(signal / noise) == pytest.approx(48.3086, abs=1e-3)


def test_rounding_is_half_to_even():
    # QuantizeLinear rounds ties to even: 0.5 -> 0, 1.5 -> 2, 2.5 -> 2, -0.5 -> 0, -1.5 -> -2
    x_int = quant_math.quantize(np.array([0.5, 1.5, 2.5, -0.5, -1.5]), 1.0, 0, -127, 127)
    assert x_int.tolist() == [0, 2, 2, 0, -2]


def test_quantize_clamps_to_the_grid():
    assert quant_math.quantize(np.array([-9.0, 9.0]), 1.0, 3, 0, 15).tolist() == [0, 12]
    assert quant_math.quantize(np.array([-9.0, 20.0]), 1.0, 3, 0, 15).tolist() == [0, 15]


def test_asymmetric_params_by_hand():
    # [-1, 3] at 8 bits: scale = 4/255; zero point = round(1 / (4/255)) = round(63.75) = 64
    scale, zero_point = quant_math.asymmetric_params(-1.0, 3.0, 8)
    assert scale == np.float32(4 / 255)
    assert zero_point == 64
    # the range is widened to contain 0: [1, 2.55] -> [0, 2.55], scale 0.01, zero point 0
    assert quant_math.asymmetric_params(1.0, 2.55, 8) == (np.float32(0.01), 0)
    # an all-zero tensor gets a harmless unit scale
    assert quant_math.asymmetric_params(0.0, 0.0, 8) == (np.float32(1.0), 0)


def test_symmetric_scale_per_channel_and_zero_channel():
    scale = quant_math.symmetric_scale(np.array([7.0, 0.0, 3.5]), 4)
    assert scale.tolist() == [1.0, 1.0, 0.5]


def test_fake_quantize_is_dequantize_of_quantize():
    x = np.array([0.26, -0.04, 10.0])
    # scale 0.1, zero point 5 on [0, 15]: round(x/0.1)+5 = [8, 5, 105->15]; (q-5)*0.1
    np.testing.assert_allclose(
        quant_math.fake_quantize(x, np.float32(0.1), 5, 0, 15), [0.3, 0.0, 1.0], rtol=1e-6
    )


def test_channel_view():
    w = np.arange(24).reshape(2, 3, 4)
    view = quant_math.channel_view(w, 1)
    assert view.shape == (3, 8)
    assert view[1].tolist() == [4, 5, 6, 7, 16, 17, 18, 19]
    assert quant_math.channel_view(w, None).shape == (1, 24)


def _float32_slack(x: np.ndarray) -> float:
    """Rounding of the float32 divide and multiply (a few ulps of the largest value)."""
    return 4 * float(np.finfo(np.float32).eps) * float(np.abs(x).max())


@pytest.mark.parametrize("seed", range(10))
def test_symmetric_round_trip_error_is_at_most_half_a_step(seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(1000).astype(np.float32) * rng.uniform(0.01, 100)
    scale = quant_math.symmetric_scale(np.abs(x).max(), 8)
    x_hat = quant_math.fake_quantize(x, scale, 0, -127, 127)
    assert np.abs(x - x_hat).max() <= scale / 2 + _float32_slack(x)


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("bits", [4, 8, 16])
def test_asymmetric_round_trip_error_is_at_most_half_a_step(seed, bits):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(1000) + rng.uniform(-2, 2)).astype(np.float32)
    scale, zero_point = quant_math.asymmetric_params(x.min(), x.max(), bits)
    x_hat = quant_math.fake_quantize(x, scale, zero_point, 0, 2**bits - 1)
    assert np.abs(x - x_hat).max() <= scale / 2 + _float32_slack(x)


def _mse(w: np.ndarray, scale: np.ndarray, bits: int, axis: int | None) -> float:
    qmax = 2 ** (bits - 1) - 1
    shape = [1] * w.ndim
    if axis is not None:
        shape[axis] = -1
    return float(
        np.mean((w - quant_math.fake_quantize(w, scale.reshape(shape), 0, -qmax, qmax)) ** 2)
    )


def _channel_spread_weights(seed: int) -> np.ndarray:
    """[8, 4, 3, 3] weights whose output channels span a 32x range of magnitudes."""
    rng = np.random.default_rng(seed)
    gains = 2.0 ** np.linspace(-3, 2, 8)
    return (rng.standard_normal((8, 4, 3, 3)) * gains[:, None, None, None]).astype(np.float32)


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("bits", [4, 8])
def test_per_channel_mse_at_most_per_tensor_mse(seed, bits):
    w = _channel_spread_weights(seed)
    per_channel = _mse(w, quant_math.mse_weight_scale(w, bits, axis=0), bits, axis=0)
    per_tensor = _mse(w, quant_math.mse_weight_scale(w, bits, axis=None), bits, axis=None)
    assert per_channel <= per_tensor


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("bits", [4, 8])
def test_mse_scale_error_at_most_minmax_scale_error(seed, bits):
    # heavy-tailed weights (Student t, 3 dof) so that clipping can pay off
    w = np.random.default_rng(seed).standard_t(3, size=(6, 50)).astype(np.float32)
    mse_scale = quant_math.mse_weight_scale(w, bits, axis=0)
    minmax_scale = quant_math.minmax_weight_scale(w, bits, axis=0)
    for c in range(w.shape[0]):
        row = w[c : c + 1]
        assert _mse(row, mse_scale[c : c + 1], bits, 0) <= _mse(
            row, minmax_scale[c : c + 1], bits, 0
        )
    assert np.all(mse_scale <= minmax_scale)


def test_mse_weight_scale_clips_an_outlier_at_4_bits_only():
    # 100 values in [-1, 1] and one 10: minmax keeps 10 (scale 10/7 at 4 bits, 10/127 at 8).
    rng = np.random.default_rng(0)
    w = np.concatenate([rng.uniform(-1, 1, 100), [10.0]]).astype(np.float32)
    assert quant_math.minmax_weight_scale(w, 4, None)[0] == np.float32(10 / 7)
    assert quant_math.mse_weight_scale(w, 4, None)[0] < 0.8 * (10 / 7)
    assert quant_math.mse_weight_scale(w, 8, None)[0] == np.float32(10 / 127)


def test_mse_activation_range_clips_an_outlier_at_4_bits():
    # 10000 values spread over [0, 1] and one outlier at ~9.995 (bins of width 0.01).
    # Expected error for a clip at h (4 bits, 15 steps): n (h/15)^2 / 12 + (9.995 - h)^2,
    # minimal at h = 9.995 / (1 + n / (12 * 15^2)) = 9.995 / 4.704 = 2.125 (grid step 0.1).
    # At 8 bits (255 steps) the same formula gives h = 9.995 / 1.0128 = 9.87: nearly no clip.
    edges = np.linspace(0.0, 10.0, 1001)
    counts = np.zeros(1000)
    counts[:100] = 100
    counts[-1] = 1
    low4, high4 = quant_math.mse_activation_range(counts, edges, 4)
    low8, high8 = quant_math.mse_activation_range(counts, edges, 8)
    assert low4 == low8 == 0.0
    assert high4 == pytest.approx(2.125, abs=0.1)
    assert high8 == pytest.approx(9.87, abs=0.1)


def test_mse_activation_range_keeps_negative_side():
    # symmetric data on [-2, 2]: both bounds are searched; at 8 bits nothing is clipped
    edges = np.linspace(-2.0, 2.0, 401)
    counts = np.full(400, 10.0)
    low, high = quant_math.mse_activation_range(counts, edges, 8)
    assert low == pytest.approx(-2.0)
    assert high == pytest.approx(2.0)


def test_mse_activation_range_of_empty_histogram():
    assert quant_math.mse_activation_range(np.zeros(4), np.linspace(0, 1, 5), 8) == (0.0, 0.0)


def test_signal_and_noise():
    assert quant_math.signal_and_noise(np.array([3.0, 4.0]), np.array([3.0, 3.0])) == (25.0, 1.0)


@pytest.mark.parametrize("seed", range(3))
def test_signal_and_noise_sum_over_batches(seed):
    rng = np.random.default_rng(seed)
    ref = rng.standard_normal((6, 10))
    approx = ref + rng.standard_normal((6, 10)) * 0.01
    whole = quant_math.signal_and_noise(ref, approx)
    parts = [quant_math.signal_and_noise(ref[i : i + 2], approx[i : i + 2]) for i in (0, 2, 4)]
    assert whole[0] == pytest.approx(sum(p[0] for p in parts), rel=1e-12)
    assert whole[1] == pytest.approx(sum(p[1] for p in parts), rel=1e-12)
    assert 10 * math.log10(whole[0] / whole[1]) == pytest.approx(oracles.sqnr_db(ref, approx), rel=1e-9)


def test_weight_scale_per_channel_axis_1():
    # a Gemm weight [K=3, N=2] (transB=0): one scale per column, minmax: [3/127, 0.5/127]
    w = np.array([[1.0, -0.5], [-3.0, 0.25], [2.0, 0.0]], np.float32)
    scale = quant_math.weight_scale(w, 8, 1, mse=False)
    np.testing.assert_allclose(scale, [3 / 127, 0.5 / 127], rtol=1e-6)
    w_int = quant_math.quantize(w, scale.reshape(quant_math.broadcast_shape(2, 1)), 0, -127, 127)
    assert w_int.tolist() == [[42, -127], [-127, 64], [85, 0]]
