"""A homogeneous run searches only the (tensor, bits) pairs it uses (issue 9, large weights)."""

from __future__ import annotations

from onnxmp import calib_data, steps
from onnxmp.hw_profile import load_profile
from onnxmp.records import Candidate
from onnxmp.run_records import Settings
from tests import builders


def _calibrated(bits):
    model = builders.residual_add()
    calib = calib_data.CalibrationSet(builders.feeds_for(model, batch=4))
    prepared = steps.prepare(model, load_profile("npu"), calib)
    return steps.calibrate_ranges(prepared, calib, Settings(), bits=bits)


def test_w8a8_searches_8_bit_ranges_only():
    keys = set(_calibrated(Candidate(8, 8)).encodings)
    assert {bits for _, bits in keys} == {8}
    # two convs' weights, the input x and r1 (read by conv2 and add), the add's activations
    assert {name for name, _ in keys} >= {"w1", "w2", "x", "r1"}


def test_a_mixed_run_searches_every_candidate_width():
    assert {bits for _, bits in _calibrated(None).encodings} == {4, 8, 16}
