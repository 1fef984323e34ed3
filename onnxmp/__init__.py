"""onnxmp: post-training mixed-precision quantization for ONNX models.

The public API: `quantize(...)` runs the whole job; `load_profile(...)` reads a hardware
profile; the record types describe plans, groups, candidates and curves.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:  # what `__getattr__` returns, for readers and type checkers
    from onnxmp.pipeline import quantize
    from onnxmp.run_records import Budget, Result, Settings


def __getattr__(name: str) -> Any:
    """`quantize`, `Settings`, `Budget` and `Result` load on first use (PEP 562).

    Why lazily: every module of onnxmp (and of onnxmp.passes) imports this package first;
    importing the pipeline here would import every pass before the records they need.
    `onnxmp.quantize` is `onnxmp.pipeline.quantize` itself, with its real signature.
    """
    if name == "quantize":
        from onnxmp.pipeline import quantize

        return quantize
    if name in ("Settings", "Budget", "Result"):
        from onnxmp import run_records

        return getattr(run_records, name)
    raise AttributeError(f"module 'onnxmp' has no attribute {name!r}")


__all__ = [
    "BudgetError", "CalibrationError", "Candidate", "Granularity", "HwProfile", "ModelError", "OnnxmpError",
    "ParetoPoint", "PassError", "Plan", "ProfileError", "QuantizerGroup", "RangeMethod", "SensitivityTable",
    "TensorEncoding", "load_profile", "quantize", "Settings", "Budget", "Result",
]
