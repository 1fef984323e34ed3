"""Issue 9, "models that crash and should run": each class end to end through the CLI.

Each tiny model of `tests/hard_models.py` is quantized with `onnxmp quantize` (local
executor, mixed precision, so phase 1 runs suffixes): exit 0, a QDQ model ONNX Runtime
loads and runs on the calibration data, and a finite measured SQNR in plan.json.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner, Result

from onnxmp import calib_data
from onnxmp.cli import main
from tests import hard_models, oracles


def quantize_hard(name: str, tmp_path: Path, *extra: str) -> Result:
    """Write model `name` and its calibration file into `tmp_path` and quantize it."""
    model_path, calib_path = tmp_path / f"{name}.onnx", tmp_path / f"{name}.npz"
    onnx.save(hard_models.HARD_MODELS[name](), model_path)
    np.savez(calib_path, **hard_models.CALIBRATION[name]())
    args = ["quantize", model_path, "--profile", "npu", "--calib", calib_path, "-o", tmp_path / "out",
            "--executor", "local", *extra]
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_quantized(result: Result, tmp_path: Path, name: str) -> dict:
    """Exit 0, finite measured SQNR, and the QDQ model runs on a few calibration samples."""
    assert result.exit_code == 0, (result.exit_code, result.output)
    out = tmp_path / "out"
    plan = json.loads((out / "plan.json").read_text())
    measured = plan["point"]["measured_sqnr_db"] if "point" in plan else plan["measured_sqnr_db"]
    assert math.isfinite(float(measured)), plan
    model = onnx.load(out / "model.qdq.onnx")
    calib = calib_data.load_arrays(tmp_path / f"{name}.npz", model)
    outputs = oracles.run(model, next(calib.batches(1)))
    assert all(np.all(np.isfinite(v)) for v in outputs.values())
    return plan


@pytest.mark.parametrize("name", ["if_branch", "loop_body"])
def test_control_flow_quantizes_the_graph_around_float_subgraphs(name, tmp_path):
    result = quantize_hard(name, tmp_path, "--target-bops", "0.3")
    plan = assert_quantized(result, tmp_path, name)
    assert "W4A8" in json.dumps(plan)  # the main graph's convs/matmuls went below 8 bits


def test_opset11_softmax_on_4d_input_runs(tmp_path):
    assert_quantized(quantize_hard("softmax_opset11", tmp_path, "--target-bops", "0.3"), tmp_path, "softmax_opset11")
