"""The `onnxmp` command line through click's CliRunner: bad input is one stderr line and exit 2."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from click.testing import CliRunner, Result
from onnx import TensorProto, helper

from onnxmp.cli import main

REPO = Path(__file__).resolve().parents[1]
DIGITS = REPO / "models" / "digits_cnn.onnx"
DIGITS_CALIB = REPO / "models" / "digits_calib.npz"
NPU_YAML = REPO / "hw_profiles" / "npu.yaml"
GROUP_IDS = ["stem/conv", "branch_a/conv", "concat", "proj/conv", "dw/conv", "fc1/gemm", "fc2/gemm"]


def _invoke(*args: str | Path) -> Result:
    # click >= 8.2 keeps stderr apart from stdout (result.stderr); `output` is both, interleaved
    return CliRunner().invoke(main, [str(a) for a in args])


def _quantize(model: Path, out: Path, *extra: str | Path, calib: Path = DIGITS_CALIB) -> Result:
    return _invoke("quantize", model, "--profile", "npu", "--calib", calib, "-o", out, *extra)


def assert_one_line_error(result: Result, *words: str) -> str:
    """Exit code 2, exactly one stderr line "onnxmp: error: ...", no traceback anywhere."""
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert isinstance(result.exception, SystemExit)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("onnxmp: error: "), lines
    assert "Traceback" not in result.output and "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def _unknown_op_model(path: Path) -> Path:
    #   x[N,4] ─ foo(Foo, default domain) ─► y[N,4]
    node = helper.make_node("Foo", ["x"], ["y"], name="foo")
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _calib(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    np.savez(path, **arrays)
    return path


def test_corrupt_model(tmp_path):
    model = tmp_path / "corrupt.onnx"
    model.write_bytes(b"\x08\x07\xff\xfe this is not a protobuf \x00\x01" * 20)
    assert_one_line_error(_quantize(model, tmp_path / "out", "--bits", "W8A8"), str(model))


def test_truncated_model(tmp_path):
    model = tmp_path / "truncated.onnx"
    data = DIGITS.read_bytes()
    model.write_bytes(data[: len(data) // 2])
    assert_one_line_error(_quantize(model, tmp_path / "out", "--bits", "W8A8"), str(model))


def test_unknown_op(tmp_path):
    model = _unknown_op_model(tmp_path / "foo.onnx")
    calib = _calib(tmp_path / "calib.npz", {"x": np.ones((4, 4), np.float32)})
    result = _quantize(model, tmp_path / "out", "--bits", "W8A8", calib=calib)
    assert_one_line_error(result, "unknown op 'Foo'", "foo")


def test_unknown_op_in_groups(tmp_path):
    model = _unknown_op_model(tmp_path / "foo.onnx")
    assert_one_line_error(_invoke("groups", model, "--profile", "npu"), "unknown op 'Foo'")


def test_wrong_profile_name(tmp_path):
    result = _invoke("quantize", DIGITS, "--profile", "nosuch", "--calib", DIGITS_CALIB, "-o", tmp_path / "out", "--bits", "W8A8")
    assert_one_line_error(result, "nosuch", "npu", "research")


def test_profile_yaml_with_a_bad_kernel(tmp_path):
    text = NPU_YAML.read_text()
    assert "kernels: [W8A16, W8A8, W4A8]" in text
    profile = tmp_path / "bad.yaml"
    profile.write_text(text.replace("kernels: [W8A16, W8A8, W4A8]", "kernels: [W8A16, W8A8, W3B8]"))
    result = _invoke("quantize", DIGITS, "--profile", profile, "--calib", DIGITS_CALIB, "-o", tmp_path / "out", "--target-bops", "0.3")
    assert_one_line_error(result, str(profile), "kernels[2]", "W3B8")


def test_impossible_budget(tmp_path):
    result = _quantize(DIGITS, tmp_path / "out", "--target-bops", "0.01")
    assert_one_line_error(result, "0.01", "0.2500 to 1.0000")
    assert not (tmp_path / "out" / "model.qdq.onnx").exists()


def test_nan_calibration_data(tmp_path):
    images = np.zeros((8, 1, 8, 8), np.float32)
    images[3, 0, 2, 5] = np.nan
    calib = _calib(tmp_path / "nan.npz", {"image": images})
    assert_one_line_error(_quantize(DIGITS, tmp_path / "out", "--bits", "W8A8", calib=calib), "image", "NaN")


def test_calibration_with_a_wrong_input_name(tmp_path):
    calib = _calib(tmp_path / "named.npz", {"img": np.zeros((8, 1, 8, 8), np.float32)})
    assert_one_line_error(_quantize(DIGITS, tmp_path / "out", "--bits", "W8A8", calib=calib), "'image'", "img")


def test_bits_that_the_profile_lacks(tmp_path):
    result = _quantize(DIGITS, tmp_path / "out", "--bits", "W3A8")
    assert_one_line_error(result, "W3A8", "npu", "W8A16, W8A8, W4A8")


def test_output_dir_below_a_file_is_a_one_line_os_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert_one_line_error(_quantize(DIGITS, blocker / "out", "--bits", "W8A8"), str(blocker / "out"))
    assert blocker.read_text() == "not a directory"


def test_output_dir_that_is_a_file_is_a_one_line_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert_one_line_error(_quantize(DIGITS, blocker, "--bits", "W8A8"), str(blocker))


def test_output_dir_that_is_a_file_is_rejected_before_anything_is_written(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = _quantize(DIGITS, blocker, "--bits", "W8A8")
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert blocker.read_text() == "not a directory"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_groups_lists_the_seven_digits_groups():
    result = _invoke("groups", DIGITS, "--profile", "npu")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("7 groups on profile npu, ")
    listed = [line[2:].split("  [")[0] for line in lines if line.startswith("- ") and "  [" in line]
    assert listed == GROUP_IDS
    assert "0 ops left in float" in lines
    assert result.stderr == ""


def test_quantize_bits_w8a8_writes_the_model(tmp_path):
    out = tmp_path / "out"
    result = _quantize(DIGITS, out, "--bits", "W8A8")
    assert result.exit_code == 0, result.output
    assert (out / "model.qdq.onnx").is_file()
    onnx.checker.check_model(onnx.load(str(out / "model.qdq.onnx")))
    assert "relative BOPs     0.5000" in result.stdout.splitlines()
    assert "groups            1x A8, 6x W8A8" in result.stdout.splitlines()
    assert result.stderr == ""


def _attention_block(tmp_path: Path) -> Path:
    from tests import builders

    path = tmp_path / "attention.onnx"
    onnx.save(builders.attention_block(), str(path))
    return path


def test_groups_counts_macs_at_the_given_input_shape(tmp_path):
    # sequence 12 (tests/test_bops.py): q, k, v, o 768 each, qk and pv 1152, ff and out 1536 = 8448;
    # without --input-shape the unknown sequence counts as 1: 4 x 64 + 2 x 8 + 2 x 128 = 528
    model = _attention_block(tmp_path)
    shaped = _invoke("groups", model, "--profile", "npu", "--input-shape", "x=1x12x8", "--input-shape", "mask=1x12")
    assert shaped.exit_code == 0, shaped.output
    assert shaped.stdout.splitlines()[0] == "6 groups on profile npu, 8448 MACs per sample"
    default = _invoke("groups", model, "--profile", "npu")
    assert default.stdout.splitlines()[0] == "6 groups on profile npu, 528 MACs per sample"


def test_groups_counts_macs_at_the_calibration_shape(tmp_path):
    model = _attention_block(tmp_path)
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=np.zeros((3, 12, 8), np.float32), mask=np.ones((3, 12), np.int64))
    result = _invoke("groups", model, "--profile", "npu", "--calib", calib)
    assert result.stdout.splitlines()[0] == "6 groups on profile npu, 8448 MACs per sample"


def test_groups_input_shape_of_an_unknown_input(tmp_path):
    result = _invoke("groups", _attention_block(tmp_path), "--profile", "npu", "--input-shape", "ids=1x12")
    assert_one_line_error(result, "--input-shape", "'ids'", "inputs: x, mask")


def test_groups_input_shape_that_is_not_a_shape(tmp_path):
    result = _invoke("groups", _attention_block(tmp_path), "--profile", "npu", "--input-shape", "x=1by12")
    assert result.exit_code == 2
    assert "expected NAME=DxDx... such as input_ids=1x128" in result.stderr


def test_onnx_runtime_refusing_a_model_onnxmp_built_is_exit_3_not_2(tmp_path, monkeypatch):
    from onnxmp import runtime

    def refuse(*args, **kwargs):
        raise RuntimeError("[ONNXRuntimeError] : 1 : FAIL : boom")

    monkeypatch.setattr(runtime.ort, "InferenceSession", refuse)
    result = _quantize(DIGITS, tmp_path / "out", "--bits", "W8A8")
    assert result.exit_code == 3, result.output
    assert result.stderr.splitlines() == [
        "onnxmp: error: internal error: InternalError: ONNX Runtime cannot load a model onnxmp built: "
        "[ONNXRuntimeError] : 1 : FAIL : boom (rerun with --debug)"
    ]


def test_nan_budgets_are_not_a_number(tmp_path):
    assert_one_line_error(_quantize(DIGITS, tmp_path / "out", "--target-bops", "nan"), "target BOPs nan is not a number")
    assert_one_line_error(_quantize(DIGITS, tmp_path / "out", "--min-sqnr", "nan"), "minimum SQNR nan is not a number")
    assert not (tmp_path / "out").exists()


def test_names_echoed_in_errors_have_no_control_characters(tmp_path):
    calib = _calib(tmp_path / "named.npz", {"image": np.zeros((8, 1, 8, 8), np.float32), "x\x1b[2J\ny": np.zeros(8)})
    line = assert_one_line_error(_quantize(DIGITS, tmp_path / "out", "--bits", "W8A8", calib=calib), "'x\\x1b[2J\\ny'")
    assert "\x1b" not in line


def test_a_one_line_error_for_an_os_error_escapes_the_file_name(tmp_path):
    blocker = tmp_path / "file\x07"
    blocker.write_text("not a directory")
    line = assert_one_line_error(_quantize(DIGITS, blocker / "out", "--bits", "W8A8"), "file\\x07")
    assert "\x07" not in line


def test_a_bad_flag_value_is_one_line(tmp_path):
    line = assert_one_line_error(_quantize(DIGITS, tmp_path / "out", "--target-bops", "-1"), "--target-bops", "-1.0")
    assert line.endswith("quantize --help)")  # click's three lines (usage, hint, error) made one
    assert_one_line_error(_quantize(DIGITS, tmp_path / "out", "--bits", "W8A8", "--batch-size", "0"), "--batch-size")
    assert_one_line_error(_invoke("quantize", tmp_path / "absent.onnx", "--profile", "npu", "-o", tmp_path), "absent.onnx")


def test_mixquant_with_one_qem_needs_no_budget_and_greedy_still_does(tmp_path):
    result = _quantize(DIGITS, tmp_path, "--strategy", "mixquant", "--qem", "4")
    assert result.exit_code == 0, result.output
    assert "selection         fixed, point 0 of 1, 0 evaluations" in result.stdout
    assert_one_line_error(_quantize(DIGITS, tmp_path, "--qem", "4"), "--target-bops", "--qem/--lam alone")


def test_progress_names_each_step_and_restarts_its_estimate(capsys):
    from onnxmp.cli_options import Progress

    progress = Progress()
    progress.enabled = True  # as on a terminal
    progress(1, 4, "adaround: conv1 @ 4 bits")
    progress(2, 4, "adaround: conv2 @ 4 bits")
    progress(1, 10, "phase 1: stem/conv W4A8")
    progress(10, 10, "fc W8A8")  # an item without a step name: phase 1's own progress
    shown = capsys.readouterr().err.split("\r")[1:]
    assert [line.split(":")[0] for line in shown] == ["adaround", "adaround", "phase 1", "phase 1"]
    assert shown[1].startswith("adaround: 2/4  conv2 @ 4 bits") and shown[2].startswith("phase 1: 1/10  stem/conv W4A8")
    assert shown[2].endswith("estimating")  # a new step: no rate of its own yet
    assert shown[3].endswith("s left\n")  # the last item ends the line
