"""calib_data: sample axes, shared scalars, per-sample feeds, static batches (issue 9).

Each test writes the feeds the model would get by hand and compares them to `batches`.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx.parser
import pytest

from onnxmp import calib_data
from onnxmp.errors import CalibrationError
from tests import builders, hard_models


def _validate(model, arrays, **kw):
    return calib_data.validate(arrays, calib_data.model_inputs(model), "calib.npz", **kw)


def test_a_state_with_its_samples_on_axis_1_is_fed_on_axis_1():
    # state[2, N, 3]: 5 samples on axis 1, 2 per run; rate: one value for every run
    state = np.arange(2 * 5 * 3, dtype=np.float32).reshape(2, 5, 3)
    x = np.arange(5 * 4, dtype=np.float32).reshape(5, 4)
    rate = np.array(8000, np.int64)
    calib = _validate(hard_models.stateful(), {"x": x, "state": state, "rate": rate, "sample_axis/state": np.array(1)})
    assert calib.num_samples == 5 and calib.sample_axes == {"state": 1}
    feeds = list(calib.batches(2))
    assert [f["state"].shape for f in feeds] == [(2, 2, 3), (2, 2, 3), (2, 1, 3)]
    np.testing.assert_array_equal(feeds[1]["state"], state[:, 2:4])
    np.testing.assert_array_equal(feeds[2]["x"], x[4:5])
    assert all(f["rate"] is rate for f in feeds)
    assert calib.feed_shapes() == {"x": (1, 4), "state": (2, 1, 3), "rate": ()}


def test_a_rank0_input_takes_one_value_for_all_samples():
    x = np.ones((3, 3), np.float32) * np.arange(3, dtype=np.float32)[:, None]
    calib = _validate(hard_models.scalar_io(), {"x": x, "gain": np.array(2.0, np.float32)})
    assert calib.num_samples == 3 and set(calib.shared) == {"gain"}
    assert [float(f["gain"]) for f in calib.batches(2)] == [2.0, 2.0]


def test_one_more_axis_than_the_input_means_one_whole_feed_per_sample():
    # x is [N,3] in the model; [4, 2, 3] holds four feeds of two rows each, run one at a time
    feeds = np.arange(4 * 2 * 3, dtype=np.float32).reshape(4, 2, 3)
    calib = _validate(hard_models.scalar_io(), {"x": feeds, "gain": np.array(1.0, np.float32)})
    assert calib.run_size == 1 and calib.num_samples == 4
    got = [f["x"] for f in calib.batches(16)]
    assert len(got) == 4
    np.testing.assert_array_equal(got[3], feeds[3])


def test_a_static_batch_fixes_the_samples_per_run_and_drops_the_rest(caplog):
    # x is [1,3,6,6]: 20 samples run one at a time whatever batch size is asked for
    data = np.random.default_rng(0).standard_normal((20, 3, 6, 6)).astype(np.float32)
    calib = _validate(hard_models.static_batch(1), {"x": data})
    assert calib.run_size == 1
    assert [f["x"].shape[0] for f in calib.batches(16)] == [1] * 20
    # x is [8,3,6,6]: 20 samples make two runs of 8; the last 4 are left out, with a warning
    with caplog.at_level(logging.WARNING, logger="onnxmp.sample_layout"):
        calib = _validate(hard_models.static_batch(8), {"x": data})
    assert calib.run_size == 8 and calib.num_samples == 16
    assert "the last 4 of 20 samples are left out" in caplog.text


def test_fewer_samples_than_the_static_batch_is_an_error():
    data = np.zeros((3, 3, 6, 6), np.float32)
    with pytest.raises(CalibrationError, match="runs 8 samples at a time .* found 3"):
        _validate(hard_models.static_batch(8), {"x": data})


@pytest.mark.parametrize(
    ("value", "message"),
    [(np.array(3), "must be one integer in 0..2"), (np.array([1]), "must be one integer"), (np.array(1.0), "must be one integer")],
)
def test_a_bad_sample_axis_is_an_error(value, message):
    arrays = hard_models.CALIBRATION["stateful"]() | {"sample_axis/state": value}
    with pytest.raises(CalibrationError, match=message):
        _validate(hard_models.stateful(), arrays)


def test_a_sample_axis_for_no_input_is_an_error():
    arrays = hard_models.CALIBRATION["stateful"]() | {"sample_axis/stat": np.array(1)}
    with pytest.raises(CalibrationError, match="'sample_axis/stat' names no model input"):
        _validate(hard_models.stateful(), arrays)


def test_zero_range_input_warns_naming_it(caplog):
    with caplog.at_level(logging.WARNING, logger="onnxmp.calib_data"):
        _validate(builders.conv_relu(), {"x": np.zeros((4, 3, 8, 8), np.float32)})
    assert "calib.npz: x: every calibration value is 0 (zero range)" in caplog.text


def test_varied_input_does_not_warn(caplog):
    with caplog.at_level(logging.WARNING, logger="onnxmp.calib_data"):
        _validate(builders.conv_relu(), builders.feeds_for(builders.conv_relu(), batch=4))
    assert caplog.text == ""


def test_limit_keeps_the_first_samples_on_the_sample_axis():
    arrays = hard_models.CALIBRATION["stateful"]()
    calib = _validate(hard_models.stateful(), arrays, limit=3)
    np.testing.assert_array_equal(next(calib.batches(8))["state"], arrays["state"][:, :3])


def test_default_layout_keeps_the_fingerprint_of_plain_arrays():
    data = np.ones((2, 3, 8, 8), np.float32)
    plain = calib_data.CalibrationSet({"x": data}).fingerprint()
    assert _validate(builders.conv_relu(), {"x": data + 0}).fingerprint() == plain
    assert calib_data.CalibrationSet({"x": data}, run_size=1).fingerprint() != plain


def test_a_model_of_rank0_inputs_only_has_one_sample():
    # g (float t) => (float y): the one value of t is the one sample, fed as it is
    model = onnx.parser.parse_model('<ir_version: 8, opset_import: ["" : 17]> g (float t) => (float y) { y = Mul (t, t) }')
    calib = _validate(model, {"t": np.array(3.0, np.float32)})
    assert calib.num_samples == 1
    assert [f["t"].shape for f in calib.batches(16)] == [()]


def test_an_input_without_element_type_is_an_error():
    # found by the fuzz suite: a zeroed byte leaves x with elem_type 0 (UNDEFINED)
    model = builders.conv_relu()
    model.graph.input[0].type.tensor_type.elem_type = 0
    with pytest.raises(CalibrationError, match="input 'x' is not a tensor"):
        _validate(model, builders.feeds_for(builders.conv_relu(), batch=2))
