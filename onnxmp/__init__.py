"""onnxmp: post-training mixed-precision quantization for ONNX models.

The public API: `quantize(...)` runs the whole job; `load_profile(...)` reads a hardware
profile; the record types describe plans, groups, candidates and curves.
"""

from __future__ import annotations

from onnxmp.errors import (
    BudgetError,
    CalibrationError,
    ModelError,
    OnnxmpError,
    PassError,
    ProfileError,
)
from onnxmp.hw_profile import HwProfile, load_profile
from onnxmp.records import (
    Candidate,
    Granularity,
    ParetoPoint,
    Plan,
    QuantizerGroup,
    RangeMethod,
    SensitivityTable,
    TensorEncoding,
)


def quantize(*args, **kwargs):
    """See `onnxmp.pipeline.quantize` (imported lazily: `passes` imports this package)."""
    from onnxmp.pipeline import quantize as run

    return run(*args, **kwargs)


__all__ = [
    "BudgetError", "CalibrationError", "Candidate", "Granularity", "HwProfile", "ModelError", "OnnxmpError",
    "ParetoPoint", "PassError", "Plan", "ProfileError", "QuantizerGroup", "RangeMethod", "SensitivityTable",
    "TensorEncoding", "load_profile", "quantize",
]
