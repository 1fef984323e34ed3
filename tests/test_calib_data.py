"""calib_data: bad data is rejected with one line; batching and fingerprints are deterministic."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from onnxmp import calib_data
from onnxmp.calib_data import CalibrationSet, Preprocess
from onnxmp.errors import CalibrationError
from tests import builders


def _images(count: int = 5, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, 3, 8, 8)).astype(np.float32)


def _error(arrays, model, where="calib.npz") -> str:
    with pytest.raises(CalibrationError) as info:
        calib_data.validate(arrays, calib_data.model_inputs(model), where)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_model_inputs(conv_relu):
    assert calib_data.model_inputs(conv_relu) == {"x": (1, (None, 3, 8, 8))}


def test_valid_data(conv_relu):
    data = _images(5)
    calib = calib_data.validate({"x": data}, calib_data.model_inputs(conv_relu), "calib.npz")
    assert calib.num_samples == 5
    assert calib.arrays["x"] is data


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf(conv_relu, bad):
    data = _images(5)
    data[3, 1, 2, 2] = bad
    assert _error({"x": data}, conv_relu) == "calib.npz: x: contains NaN or inf"


def test_wrong_name(conv_relu):
    assert (
        _error({"image": _images()}, conv_relu)
        == "calib.npz: no data for model input 'x' (found: image)"
    )


def test_extra_name(conv_relu):
    arrays = {"x": _images(), "mask": _images()}
    assert _error(arrays, conv_relu) == "calib.npz: 'mask' is not a model input (inputs: x)"


def test_wrong_dtype(conv_relu):
    data = _images().astype(np.float64)
    assert _error({"x": data}, conv_relu) == "calib.npz: x: dtype float64, model expects float32"


@pytest.mark.parametrize("shape", [(5, 3, 8, 9), (5, 1, 8, 8), (5, 3, 8), (5, 3, 8, 8, 1)])
def test_wrong_shape(conv_relu, shape):
    data = np.zeros(shape, np.float32)
    assert (
        _error({"x": data}, conv_relu) == f"calib.npz: x: shape {shape}, model expects [?, 3, 8, 8]"
    )


def test_no_samples(conv_relu):
    assert (
        _error({"x": np.zeros((0, 3, 8, 8), np.float32)}, conv_relu) == "calib.npz: x: no samples"
    )


def test_different_sample_counts():
    model = builders.shared_weight_conv_bn()  # inputs x1 and x2, both [N,3,6,6]
    arrays = {"x1": np.zeros((3, 3, 6, 6), np.float32), "x2": np.zeros((4, 3, 6, 6), np.float32)}
    assert _error(arrays, model) == "calib.npz: inputs have different sample counts [3, 4]"


def test_batches_are_deterministic_and_cover_every_sample():
    data = _images(7)
    calib = CalibrationSet({"x": data})
    first = list(calib.batches(3))
    assert [len(b["x"]) for b in first] == [3, 3, 1]
    np.testing.assert_array_equal(np.concatenate([b["x"] for b in first]), data)
    second = list(calib.batches(3))
    assert all(np.array_equal(a["x"], b["x"]) for a, b in zip(first, second, strict=True))


def test_fingerprint_changes_with_the_data():
    data = _images(4)
    fingerprint = CalibrationSet({"x": data}).fingerprint()
    assert CalibrationSet({"x": data.copy()}).fingerprint() == fingerprint
    changed = data.copy()
    changed[2, 0, 0, 0] += 1e-3
    assert CalibrationSet({"x": changed}).fingerprint() != fingerprint
    assert CalibrationSet({"x": data[:3]}).fingerprint() != fingerprint
    assert CalibrationSet({"y": data}).fingerprint() != fingerprint
    assert CalibrationSet({"x": data.astype(np.float16)}).fingerprint() != fingerprint


def test_load_npz_ignores_labels_and_applies_limit(tmp_path, conv_relu):
    data = _images(6)
    path = tmp_path / "calib.npz"
    np.savez(path, x=data, label=np.arange(6))
    calib = calib_data.load_arrays(path, conv_relu, limit=4)
    assert list(calib.arrays) == ["x"]
    np.testing.assert_array_equal(calib.arrays["x"], data[:4])


def test_load_npy_for_one_input_model(tmp_path, conv_relu):
    data = _images(2)
    path = tmp_path / "calib.npy"
    np.save(path, data)
    np.testing.assert_array_equal(calib_data.load_arrays(path, conv_relu).arrays["x"], data)


def test_load_npy_for_two_input_model(tmp_path):
    path = tmp_path / "calib.npy"
    np.save(path, np.zeros((2, 3, 6, 6), np.float32))
    with pytest.raises(CalibrationError) as info:
        calib_data.load_arrays(path, builders.shared_weight_conv_bn())
    assert str(info.value) == f"{path}: a .npy file fits one-input models; this model has 2"


def test_load_unreadable_file(tmp_path, conv_relu):
    path = tmp_path / "calib.npz"
    path.write_bytes(b"not a zip file")
    with pytest.raises(CalibrationError) as info:
        calib_data.load_arrays(path, conv_relu)
    assert str(info.value).startswith(f"{path}: cannot read calibration data: ")


def test_load_nan_file_names_the_file(tmp_path, conv_relu):
    data = _images(2)
    data[0, 0, 0, 0] = np.nan
    path = tmp_path / "calib.npz"
    np.savez(path, x=data)
    with pytest.raises(CalibrationError) as info:
        calib_data.load_arrays(path, conv_relu)
    assert str(info.value) == f"{path}: x: contains NaN or inf"


def _image_folder(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    # solid colours survive the bilinear resize and the crop unchanged
    Image.new("RGB", (12, 10), (255, 0, 0)).save(folder / "a_red.png")
    Image.new("RGB", (8, 16), (0, 255, 0)).save(folder / "b_green.png")
    Image.new("RGB", (8, 8), (0, 0, 255)).save(folder / "c_blue.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_load_images_unit(tmp_path, conv_relu):
    calib = calib_data.load_images(_image_folder(tmp_path), conv_relu, Preprocess.UNIT)
    x = calib.arrays["x"]
    assert x.shape == (3, 3, 8, 8)
    assert x.dtype == np.float32
    # sorted by name: red, green, blue; channel c of image i is 1 exactly when c == i
    np.testing.assert_array_equal(x.mean(axis=(2, 3)), np.eye(3, dtype=np.float32))
    np.testing.assert_array_equal(x.min(axis=(2, 3)), np.eye(3, dtype=np.float32))


def test_load_images_tf_and_imagenet(tmp_path, conv_relu):
    folder = _image_folder(tmp_path)
    tf = calib_data.load_images(folder, conv_relu, Preprocess.TF, limit=1).arrays["x"]
    # (255 - 127) / 128 = 1.0 and (0 - 127) / 128 = -0.9921875
    assert tf.shape == (1, 3, 8, 8)
    np.testing.assert_array_equal(tf[0, :, 0, 0], [1.0, -0.9921875, -0.9921875])
    imagenet = calib_data.load_images(folder, conv_relu, Preprocess.IMAGENET, limit=1).arrays["x"]
    # red: (1 - 0.485) / 0.229, (0 - 0.456) / 0.224, (0 - 0.406) / 0.225
    np.testing.assert_allclose(imagenet[0, :, 3, 3], [2.2489083, -2.0357143, -1.8044444], rtol=1e-6)


def test_center_crop_is_centred(tmp_path):
    # 16x8: left half red, right half blue; the 8x8 crop takes equal parts of both
    pixels = np.zeros((8, 16, 3), np.uint8)
    pixels[:, :8, 0] = 255
    pixels[:, 8:, 2] = 255
    path = tmp_path / "half.png"
    Image.fromarray(pixels).save(path)
    x = calib_data.preprocess_image(path, 8, Preprocess.UNIT)
    assert x.shape == (3, 8, 8)
    assert x[0].mean() == pytest.approx(x[2].mean(), abs=1e-6)
    assert x[0, :, 0].min() > 0.9
    assert x[2, :, -1].min() > 0.9


def test_load_images_errors(tmp_path, conv_relu):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CalibrationError) as info:
        calib_data.load_images(empty, conv_relu, Preprocess.UNIT)
    assert str(info.value) == f"{empty}: no images (.bmp, .jpeg, .jpg, .png, .webp) found"
    with pytest.raises(CalibrationError) as info:
        calib_data.load_images(_image_folder(tmp_path), builders.gemm_bn(), Preprocess.UNIT)
    assert (
        str(info.value)
        == f"{tmp_path / 'images'}: input 'x' is [?, 8], not an NCHW RGB image batch"
    )


def test_unreadable_image(tmp_path, conv_relu):
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "broken.png").write_bytes(b"\x89PNG but not really")
    with pytest.raises(CalibrationError) as info:
        calib_data.load_images(folder, conv_relu, Preprocess.UNIT)
    assert str(info.value) == f"{folder / 'broken.png'}: not a readable image"


def test_a_truncated_npz_says_so(tmp_path, conv_relu):
    whole = tmp_path / "whole.npz"
    np.savez(whole, x=_images(4))
    path = tmp_path / "calib.npz"
    path.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(CalibrationError) as info:
        calib_data.load_arrays(path, conv_relu)
    assert str(info.value) == (
        f"{path}: cannot read calibration data: not a complete .npz file (truncated or damaged: File is not a zip file)"
    )


def test_a_damaged_compressed_npz_is_a_calibration_error(tmp_path, conv_relu):
    path = tmp_path / "calib.npz"
    np.savez_compressed(path, x=_images(64))
    data = bytearray(path.read_bytes())
    start = data.index(b"x.npy") + 200  # inside the deflate stream of x.npy
    data[start : start + 16] = bytes(16)
    path.write_bytes(bytes(data))
    with pytest.raises(CalibrationError, match=f"^{path}: cannot read calibration data: "):
        calib_data.load_arrays(path, conv_relu)


def test_pickled_arrays_are_named_as_such(tmp_path, conv_relu):
    path = tmp_path / "calib.npz"
    np.savez(path, x=np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(CalibrationError) as info:
        calib_data.load_arrays(path, conv_relu)
    assert str(info.value) == f"{path}: cannot read calibration data: it holds Python objects (pickled data), not numeric arrays"


def _string_input_model():
    import onnx
    from onnx import TensorProto, helper

    #   text[N] (string) ─ ident(Identity) ─► y[N]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["text"], ["y"], name="ident")], "g",
        [helper.make_tensor_value_info("text", TensorProto.STRING, ["N"])],
        [helper.make_tensor_value_info("y", TensorProto.STRING, ["N"])],
    )
    return helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])


def test_a_string_input_has_nothing_to_quantize(tmp_path):
    path = tmp_path / "calib.npz"
    np.savez(path, text=np.array([b"a", b"bc"], dtype=object))  # what a user would have to write
    with pytest.raises(CalibrationError) as info:
        calib_data.load_arrays(path, _string_input_model())
    assert str(info.value) == f"{path}: input 'text' is a string input, nothing to quantize"
    assert _error({"text": np.array(["a"])}, _string_input_model()) == (
        "calib.npz: input 'text' is a string input, nothing to quantize"
    )


def test_a_sequence_input_is_not_a_tensor(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    #   seq (sequence of float[N]) ─ at(SequenceAt, 0) ─► y[N]
    zero = helper.make_tensor("zero", TensorProto.INT64, [], [0])
    graph = helper.make_graph(
        [helper.make_node("SequenceAt", ["seq", "zero"], ["y"], name="at")], "g",
        [helper.make_tensor_sequence_value_info("seq", TensorProto.FLOAT, ["N"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N"])], initializer=[zero],
    )
    model = helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    path = tmp_path / "calib.npz"
    np.savez(path, seq=np.zeros((2, 3), np.float32))
    with pytest.raises(CalibrationError) as info:
        calib_data.load_arrays(path, model)
    assert str(info.value) == f"{path}: input 'seq' is not a tensor; onnxmp calibrates tensor inputs only"


def test_check_finite_ranges_names_the_first_tensor_that_overflows():
    ranges = {"x": (-3e38, 3e38), "conv": (0.0, np.inf), "relu": (np.nan, np.inf)}
    with pytest.raises(CalibrationError) as info:
        calib_data.check_finite_ranges(ranges)
    assert str(info.value) == (
        "calibration data: tensor 'conv' overflows float32 (range 0.0..inf); "
        "the inputs are too large for this model: scale them down"
    )
    calib_data.check_finite_ranges({"x": (-3e38, 3e38)})


def test_starts_step_like_the_runs_batches_yields():
    from onnxmp.calib_data import CalibrationSet

    free = CalibrationSet({"x": np.zeros((20, 3), np.float32)})
    assert list(free.starts(8)) == [0, 8, 16] and len(list(free.batches(8))) == 3
    static = CalibrationSet({"x": np.zeros((6, 3), np.float32)}, run_size=2)  # a model with a fixed batch of 2
    assert list(static.starts(8)) == [0, 2, 4] and [b["x"].shape[0] for b in static.batches(8)] == [2, 2, 2]
