"""Accept the three inputs of a run as paths or as loaded values.

Why: the CLI passes paths, the Python API may pass an `onnx.ModelProto`, a profile name or
record, and calibration arrays; every form is validated the same way before a run starts.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import onnx

from onnxmp import calib_data, model_io
from onnxmp.calib_data import CalibrationSet
from onnxmp.hw_profile import HwProfile, load_profile


def load_inputs(model: str | Path | onnx.ModelProto, profile: str | Path | HwProfile, calib) -> tuple[onnx.ModelProto, HwProfile, CalibrationSet]:
    """Accept paths or loaded values for the three inputs of a run."""
    if not isinstance(model, onnx.ModelProto):
        model = model_io.load(model)
    else:
        model_io.validate(model)
    if not isinstance(profile, HwProfile):
        profile = load_profile(profile)
    if isinstance(calib, CalibrationSet):
        pass
    elif isinstance(calib, Mapping):
        calib = calib_data.validate(calib, calib_data.model_inputs(model), "calibration arrays")
    else:
        calib = calib_data.load_arrays(calib, model)
    return model, profile, calib
