"""Issue 9, "models that crash and should run": each class end to end through the CLI.

Each tiny model of `tests/hard_models.py` is quantized with `onnxmp quantize` (local
executor, mixed precision, so phase 1 runs suffixes): exit 0, a QDQ model ONNX Runtime
loads and runs on the calibration data, and a finite measured SQNR in plan.json.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
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


@pytest.mark.parametrize("rounding", ["nearest", "adaround"])
@pytest.mark.parametrize("name", ["static_batch", "static_batch_reshape"])
def test_static_batch_runs_chunk_by_chunk_at_the_models_batch(name, rounding, tmp_path):
    # 20 samples, input [1,...]: every run takes one sample (ORT refuses 16); AdaRound's Gram
    # pass and both walks (search, then the chosen plan) too
    result = quantize_hard(name, tmp_path, "--target-bops", "0.3", "--weight-rounding", rounding)
    assert_quantized(result, tmp_path, name)
    assert (tmp_path / "out" / "adaround.jsonl").exists() is (rounding == "adaround")


def test_static_batch_results_match_a_batch1_run(tmp_path):
    # the same samples at --batch-size 1 give the same SQNR: chunking only at the model's size
    first = quantize_hard("static_batch", tmp_path / "a", "--bits", "W8A8") if (tmp_path / "a").mkdir() is None else None
    second = quantize_hard("static_batch", tmp_path / "b", "--bits", "W8A8", "--batch-size", "1") if (tmp_path / "b").mkdir() is None else None
    plans = [json.loads((tmp_path / d / "out" / "plan.json").read_text()) for d in ("a", "b")]
    assert first.exit_code == second.exit_code == 0
    assert plans[0]["measured_sqnr_db"] == plans[1]["measured_sqnr_db"]


def test_scalar_input_and_output(tmp_path):
    assert_quantized(quantize_hard("scalar_io", tmp_path, "--target-bops", "0.3"), tmp_path, "scalar_io")


def test_stateful_model_with_samples_on_axis_1_and_a_scalar_rate(tmp_path):
    assert_quantized(quantize_hard("stateful", tmp_path, "--target-bops", "0.3"), tmp_path, "stateful")


def test_nothing_to_quantize_says_so_in_one_line(tmp_path, caplog):
    # (under pytest, log records reach caplog instead of stderr; warnings are recorded here)
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        result = quantize_hard("nothing_to_quantize", tmp_path, "--bits", "W8A8")
    assert result.exit_code == 0, result.output
    assert [r.getMessage()[:19] for r in caplog.records] == ["nothing to quantize"]
    assert "profile npu (1 ops stay float" in caplog.text
    assert [str(w.message) for w in caught] == []  # matplotlib's empty-legend warning included


def test_all_zero_calibration_input_warns_naming_it(tmp_path, caplog):
    model_path, calib_path = tmp_path / "m.onnx", tmp_path / "c.npz"
    onnx.save(hard_models.static_batch(1), model_path)
    np.savez(calib_path, x=np.zeros((4, 3, 6, 6), np.float32))
    with caplog.at_level(logging.WARNING):
        result = CliRunner().invoke(main, ["quantize", str(model_path), "--profile", "npu", "--calib", str(calib_path),
                                           "-o", str(tmp_path / "out"), "--bits", "W8A8", "--executor", "local"])
    assert result.exit_code == 0, result.output
    assert "c.npz: x: every calibration value is 0 (zero range)" in caplog.text


def test_nothing_to_quantize_is_refused_with_strict(tmp_path):
    result = quantize_hard("nothing_to_quantize", tmp_path, "--bits", "W8A8", "--strict")
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines() == [
        "onnxmp: error: nothing to quantize on profile npu (--strict): no op has a kernel"
    ]


@pytest.mark.parametrize(
    ("name", "line"),
    [("scalar_io", "- fc  [W8A16 W8A8 W4A8]  MACs 100.00%"),  # the only op with MACs
     ("stateful", "- mm_in  [W8A16 W8A8 W4A8]  MACs 57.14%")],  # 4x3 = 12 of 12 + 3x3 = 21
)
def test_groups_lists_models_with_rank0_inputs(name, line, tmp_path):
    # bops.concrete_graph met a rank-0 input as [1] (IndexError, exit 3)
    model_path = tmp_path / f"{name}.onnx"
    onnx.save(hard_models.HARD_MODELS[name](), model_path)
    result = CliRunner().invoke(main, ["groups", str(model_path), "--profile", "npu"])
    assert result.exit_code == 0, result.output
    assert line in result.output.splitlines()
