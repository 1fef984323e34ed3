"""MACs behind an If output come from one run's shapes, never silently 0 (issue 9)."""

from __future__ import annotations

import logging

from onnxmp import calib_data, steps
from onnxmp.hw_profile import load_profile
from tests import hard_models


def _prepare(name: str, with_calib: bool = True):
    model = hard_models.HARD_MODELS[name]()
    calib = calib_data.validate(hard_models.CALIBRATION[name](), calib_data.model_inputs(model), "c.npz")
    return steps.prepare(model, load_profile("npu"), calib if with_calib else None)


def test_macs_after_an_if_come_from_running_one_sample():
    # conv1: 3->2 channels, 3x3, pads 1 on 4x4: 16 x 2 x (3*9) = 864
    # conv2: 2->2 channels after the If (shape inference cannot see through it): 16 x 2 x (2*9) = 576
    assert dict(_prepare("if_branch").macs) == {"conv1": 864, "conv2": 576}


def test_macs_on_a_dynamic_sequence_come_from_the_calibration_shapes():
    # x[1, 7, 8] @ w[8, 6]: 7 x 6 outputs x 8
    assert dict(_prepare("dynamic_sequence").macs) == {"mm": 7 * 6 * 8}


def test_without_calibration_unknown_macs_are_named_in_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="onnxmp.steps"):
        prepared = _prepare("if_branch", with_calib=False)
    assert "conv2" not in prepared.macs
    assert "MACs of 1 quantized ops are unknown (e.g. conv2" in caplog.text
