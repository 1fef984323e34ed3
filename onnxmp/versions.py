"""Versions of onnxmp and of the libraries that change its numbers.

Why: the phase-1 store key and the report both name them; one function each keeps the two
from drifting apart.
"""

from __future__ import annotations

import platform
from importlib import import_module, metadata


def onnxmp_version() -> str:
    """The installed onnxmp version ("unknown" when run from a checkout without metadata)."""
    try:
        return metadata.version("onnxmp")
    except metadata.PackageNotFoundError:
        return "unknown"


def versions() -> dict[str, str]:
    """Versions that change numbers (onnxruntime kernels, numpy) or the report (matplotlib)."""
    found = {name: import_module(name).__version__ for name in ("onnx", "onnxruntime", "numpy", "matplotlib")}
    return {"onnxmp": onnxmp_version(), **found, "python": platform.python_version()}
