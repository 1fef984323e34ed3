"""model_io: one-line ModelErrors for bad files, a read-only input, atomic saves."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxmp import model_io
from onnxmp.errors import ModelError
from tests import builders


def _saved(tmp_path: Path, model: onnx.ModelProto, name: str = "model.onnx") -> Path:
    path = tmp_path / name
    path.write_bytes(model.SerializeToString())
    return path


def _load_error(path: Path) -> str:
    with pytest.raises(ModelError) as info:
        model_io.load(path)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_load_returns_the_model_and_leaves_the_file_alone(tmp_path, conv_relu):
    path = _saved(tmp_path, conv_relu)
    before = path.read_bytes()
    model = model_io.load(path)
    assert model == conv_relu
    model.graph.node[0].name = "renamed"
    del model.graph.initializer[:]
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_corrupt_bytes(tmp_path):
    path = tmp_path / "corrupt.onnx"
    path.write_bytes(b"\x00\xffthis is not protobuf" * 8)
    assert _load_error(path) == f"{path}: not a readable ONNX model (corrupt or truncated file)"


@pytest.mark.parametrize("fraction", [0.1, 0.33, 0.5, 0.9, 0.99])
def test_truncated_file(tmp_path, conv_relu, fraction):
    data = conv_relu.SerializeToString()
    path = tmp_path / "truncated.onnx"
    path.write_bytes(data[: int(len(data) * fraction)])
    assert _load_error(path).startswith(f"{path}: ")


def test_missing_file(tmp_path):
    path = tmp_path / "absent.onnx"
    assert _load_error(path) == f"{path}: file not found ({path})"


def test_empty_file(tmp_path):
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")
    assert _load_error(path) == f"{path}: not an ONNX model (no graph nodes)"


def test_unknown_op(tmp_path, conv_relu):
    conv_relu.graph.node[1].op_type = "Frobnicate"
    path = _saved(tmp_path, conv_relu)
    assert _load_error(path) == f"{path}: node 'relu': unknown op 'Frobnicate'"


def test_unknown_op_in_custom_domain(tmp_path, conv_relu):
    conv_relu.graph.node[1].op_type = "Frobnicate"
    conv_relu.graph.node[1].domain = "example.ops"
    path = _saved(tmp_path, conv_relu)
    assert (
        _load_error(path) == f"{path}: node 'relu': unknown op 'Frobnicate' in domain 'example.ops'"
    )


def test_model_the_checker_rejects(tmp_path, conv_relu):
    conv_relu.graph.node[1].input[0] = "ghost"  # consumes a tensor nothing defines
    path = _saved(tmp_path, conv_relu)
    message = _load_error(path)
    assert message.startswith(f"{path}: invalid ONNX model: ")
    assert "ghost" in message


def test_validate_in_memory(conv_relu):
    model_io.validate(conv_relu)
    conv_relu.graph.node[0].op_type = "Konv"
    with pytest.raises(ModelError) as info:
        model_io.validate(conv_relu)
    assert str(info.value) == "model: node 'conv': unknown op 'Konv'"


def test_fingerprint(conv_relu):
    first = model_io.fingerprint(conv_relu)
    assert re.fullmatch("[0-9a-f]{64}", first)
    assert model_io.fingerprint(builders.conv_relu()) == first
    assert model_io.fingerprint(builders.conv_relu(seed=1)) != first


def test_fingerprint_sees_every_weight_byte(conv_relu):
    first = model_io.fingerprint(conv_relu)
    assert model_io.fingerprint(conv_relu) == first
    for name in ("w", "b"):  # w is hashed apart from the structure, b (rank 1, small) within it
        for position in (0, -1):
            changed = onnx.ModelProto()
            changed.CopyFrom(conv_relu)
            tensor = next(t for t in changed.graph.initializer if t.name == name)
            data = bytearray(tensor.raw_data)
            data[position] ^= 1
            tensor.raw_data = bytes(data)
            assert model_io.fingerprint(changed) != first, (name, position)


def test_fingerprint_sees_a_weight_under_another_name(conv_relu):
    first = model_io.fingerprint(conv_relu)
    conv_relu.graph.initializer[0].name = "w2"
    conv_relu.graph.node[0].input[1] = "w2"
    assert model_io.fingerprint(conv_relu) != first


def _save_with_external_data(path: Path) -> Path:
    """conv_relu as onnx saves it with every weight in `<name>.data` (onnx empties the proto it saves)."""
    onnx.save_model(
        builders.conv_relu(), str(path), save_as_external_data=True, location=f"{path.name}.data",
        size_threshold=0,
    )
    return path


def test_fingerprint_does_not_depend_on_where_the_weights_were_stored(tmp_path, conv_relu):
    _save_with_external_data(tmp_path / "m.onnx")
    assert model_io.fingerprint(model_io.load(tmp_path / "m.onnx")) == model_io.fingerprint(conv_relu)


def test_load_model_with_external_data_leaves_both_files_alone(tmp_path, conv_relu):
    path = _save_with_external_data(tmp_path / "m.onnx")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert sorted(before) == ["m.onnx", "m.onnx.data"]
    assert len(before["m.onnx.data"]) >= 4 * 3 * 3 * 3 * 4  # the weights live in the data file
    model = model_io.load(path)
    assert model == conv_relu
    model.graph.initializer[0].raw_data = b""
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_validate_a_large_model_on_its_weightless_copy(conv_relu):
    large = model_io.SizeLimits(large_weights=0)  # a model of 2 GB is too heavy for a test
    model_io.validate(conv_relu, limits=large)
    conv_relu.graph.node[1].input[0] = "ghost"
    with pytest.raises(ModelError, match="ghost"):
        model_io.validate(conv_relu, limits=large)


def test_save_leaves_the_model_alone(tmp_path, conv_relu):
    before = (conv_relu.ByteSize(), conv_relu.SerializeToString())
    model_io.save(conv_relu, tmp_path / "small.onnx")
    large = model_io.SizeLimits(protobuf=1, weight_min_bytes=0)  # a model of 2 GB is too heavy for a test
    model_io.save(conv_relu, tmp_path / "large.onnx", limits=large)
    assert (conv_relu.ByteSize(), conv_relu.SerializeToString()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["large.onnx", "large.onnx.data", "small.onnx"]
    assert model_io.load(tmp_path / "large.onnx") == conv_relu
    assert model_io.load(tmp_path / "small.onnx") == conv_relu


def test_save_round_trip_leaves_no_temporary_files(tmp_path, conv_relu):
    path = model_io.save(conv_relu, tmp_path / "out" / "model.onnx")
    assert path == tmp_path / "out" / "model.onnx"
    assert onnx.load(str(path)) == conv_relu
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["model.onnx"]


def test_save_replaces_an_existing_file(tmp_path, conv_relu):
    path = _saved(tmp_path, builders.depthwise())
    model_io.save(conv_relu, path)
    assert onnx.load(str(path)) == conv_relu
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_failed_save_keeps_the_old_file_and_no_temporary(tmp_path, conv_relu):
    path = _saved(tmp_path, conv_relu)
    before = path.read_bytes()
    with pytest.raises(AttributeError):
        model_io.save("not a model", path)  # type: ignore[arg-type]
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_write_text_is_atomic(tmp_path):
    path = model_io.write_text("line 1\nline 2\n", tmp_path / "report" / "r.txt")
    assert path.read_text() == "line 1\nline 2\n"
    model_io.write_text("new\n", path)
    assert path.read_text() == "new\n"
    assert [p.name for p in path.parent.iterdir()] == ["r.txt"]


def _external_weight_model(folder, location: str):
    """conv x[N,3,8,8] ─ conv(w) ─► y, w's 108 floats at `location` (external data)."""
    from onnx import TensorProto, helper

    weight = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4, 3, 3, 3], data_location=TensorProto.EXTERNAL)
    for key, value in (("location", location), ("offset", "0"), ("length", str(4 * 108))):
        weight.external_data.add(key=key, value=value)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="conv")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=[weight],
    )
    path = folder / "model.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    return path


@pytest.mark.parametrize(
    ("location", "why"),
    [
        ("../secret.bin", "points outside the directory"),
        ("sub/../../secret.bin", "points outside the directory"),
        ("/etc/passwd", "it is an absolute path"),
        ("link.bin", "it is a symbolic link"),
        ("absent.bin", "it is not regular file"),
    ],
)
def test_external_data_outside_the_model_folder_is_a_model_error(tmp_path, location, why):
    (tmp_path / "secret.bin").write_bytes(np.arange(108, dtype=np.float32).tobytes())
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "link.bin").symlink_to(tmp_path / "secret.bin")
    path = _external_weight_model(folder, location)
    with pytest.raises(ModelError) as info:
        model_io.load(path)
    message = str(info.value)
    assert message.startswith(f"{path}: refused external data: ") and why in message
    assert "\n" not in message


def test_control_characters_of_an_external_data_name_are_escaped(tmp_path):
    path = _external_weight_model(tmp_path, "w\x1b[2J\n.bin")
    with pytest.raises(ModelError) as info:
        model_io.load(path)
    assert "w\\x1b[2J\\n.bin" in str(info.value)
    assert "\x1b" not in str(info.value) and "\n" not in str(info.value)
