"""Models beyond the 2 GB protobuf limit: weightless copies, external-data saves, passes, sessions.

A real model over 2 GB is too heavy for the test suite (a 2-core machine, a 10-minute suite),
so the `large` fixture lowers the limits instead: `model_io.PROTOBUF_LIMIT` to 1 byte (every
model is saved with external data) and `model_io.LARGE_WEIGHTS` to 0 (every pass and session
works on a weightless copy). `WEIGHT_MIN_BYTES` keeps its 1 KiB, so the model below has both
kinds of initializer: external (w, wq) and inline (b, shape).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxmp import model_io, runtime
from onnxmp.errors import ModelError
from onnxmp.passes import CANONICALIZE
from tests import builders


@pytest.fixture
def large(monkeypatch):
    monkeypatch.setattr(model_io, "PROTOBUF_LIMIT", 1)
    monkeypatch.setattr(model_io, "LARGE_WEIGHTS", 0)


def _two_matmuls(*, typed_int8: bool = True) -> onnx.ModelProto:
    #   x[N,64] ─ mm(w[64,64] float, 16 KiB) ─ add(b[64]) ─► h
    #   h ─ mm(dequant(wq[64,64] int8 in int32_data, 0.01)) ─ reshape(shape = [-1,8,8]) ─► y[N,8,8]
    rng = np.random.default_rng(0)
    model = onnx.parser.parse_model(
        builders.HEADER
        + """
        g (float[N,64] x) => (float[N,8,8] y) {
            [mm] m = MatMul (x, w)
            [add] h = Add (m, b)
            [dq] wf = DequantizeLinear (wq, wq_scale)
            [mm2] m2 = MatMul (h, wf)
            [reshape] y = Reshape (m2, shape)
        }"""
    )
    wq = rng.integers(-128, 128, (64, 64), dtype=np.int8)
    model.graph.initializer.extend([
        numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.standard_normal(64).astype(np.float32), "b"),
        helper.make_tensor("wq", TensorProto.INT8, wq.shape, wq.ravel().tolist())
        if typed_int8 else numpy_helper.from_array(wq, "wq"),
        numpy_helper.from_array(np.array(0.01, np.float32), "wq_scale"),
        numpy_helper.from_array(np.array([-1, 8, 8], np.int64), "shape"),
    ])
    return model


def _arrays(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def test_the_model_has_both_kinds_of_initializer():
    model = _two_matmuls()
    assert [t.name for t in model_io.weights(model)] == ["w", "wq"]
    assert not model.graph.initializer[2].HasField("raw_data")  # wq: int8 in int32_data


def test_weightless_copy_keeps_names_types_and_dims_only():
    model = _two_matmuls()
    before = model.SerializeToString()
    weights = model_io.weights(model)
    copy = model_io.weightless(model, weights)
    assert model.SerializeToString() == before
    assert copy.ByteSize() < 1024 < sum(t.ByteSize() for t in weights)
    assert copy.graph.node == model.graph.node and copy.graph.input == model.graph.input
    stubs = {t.name: t for t in copy.graph.initializer}
    for tensor in weights:
        stub = stubs[tensor.name]
        assert (stub.dims, stub.data_type) == (tensor.dims, tensor.data_type)
        assert not stub.raw_data and not stub.int32_data
        assert stub.data_location == TensorProto.EXTERNAL
    assert stubs["b"] == model.graph.initializer[1]
    assert model_io.restore_weights(copy, weights) == model


def test_external_save_writes_the_weights_beside_the_model_and_reloads_exactly(tmp_path, large):
    model = _two_matmuls(typed_int8=False)
    before = (model.ByteSize(), model.SerializeToString())
    path = model_io.save(model, tmp_path / "m.onnx")
    assert (model.ByteSize(), model.SerializeToString()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]
    assert path.stat().st_size < 1024  # the weights are not in the model file
    # w (16 KiB) starts at 0; wq (4 KiB) is aligned to 4096 after it
    on_disk = onnx.load(str(path), load_external_data=False)
    info = {t.name: {e.key: e.value for e in t.external_data} for t in on_disk.graph.initializer if t.external_data}
    assert info == {
        "w": {"location": "m.onnx.data", "offset": "0", "length": "16384"},
        "wq": {"location": "m.onnx.data", "offset": "16384", "length": "4096"},
    }
    assert model_io.load(path) == model


def test_typed_field_weights_are_saved_as_raw_bytes_with_the_same_values(tmp_path, large):
    model = _two_matmuls()
    loaded = model_io.load(model_io.save(model, tmp_path / "m.onnx"))
    expected, got = _arrays(model), _arrays(loaded)
    assert list(got) == list(expected)
    for name, array in expected.items():
        assert got[name].dtype == array.dtype
        np.testing.assert_array_equal(got[name], array)
    assert loaded.graph.node == model.graph.node


def test_external_save_replaces_both_files(tmp_path, large):
    path = model_io.save(_two_matmuls(), tmp_path / "m.onnx")
    other = _two_matmuls(typed_int8=False)
    other.graph.initializer[0].raw_data = bytes(16384)
    model_io.save(other, path)
    assert not model_io.load(path).graph.initializer[0].raw_data.strip(b"\0")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]


def test_failed_external_save_keeps_the_old_model_and_no_temporary(tmp_path, large):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"old model")
    (tmp_path / "m.onnx.data").mkdir()  # the data file cannot be moved into place
    with pytest.raises(OSError):
        model_io.save(_two_matmuls(), path)
    assert path.read_bytes() == b"old model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]


def test_load_session_run_save_end_to_end(tmp_path, large):
    model = _two_matmuls()
    feeds = builders.feeds_for(model, batch=3)
    expected = runtime.session(_serialized_path(tmp_path, model))  # a path: the usual way
    loaded = model_io.load(model_io.save(model, tmp_path / "out" / "m.onnx"))
    sess = runtime.session(loaded)
    assert [t.name for t in model_io.weights(loaded)] == ["w", "wq"]
    assert len(sess.onnxmp_weights) == 2
    for got, want in zip(sess.run(None, feeds), expected.run(None, feeds), strict=True):
        np.testing.assert_array_equal(got, want)


def _serialized_path(tmp_path, model: onnx.ModelProto) -> str:
    """The model as one ordinary file."""
    path = tmp_path / "whole.onnx"
    path.write_bytes(model.SerializeToString())
    return str(path)


def test_validate_checks_the_weightless_copy(large):
    model = _two_matmuls()
    model_io.validate(model)
    model.graph.node[1].input[0] = "ghost"
    with pytest.raises(ModelError, match="ghost"):
        model_io.validate(model)


def _pass_cases():
    for run in CANONICALIZE:
        for name in builders.BUILDERS:
            yield pytest.param(run, name, id=f"{run.__name__}-{name}")


@pytest.mark.parametrize(("run", "name"), _pass_cases())
def test_canonicalize_on_weightless_copies_gives_the_same_bytes(run, name, monkeypatch):
    model = builders.BUILDERS[name]()
    expected = run(model).SerializeToString(deterministic=True)
    before = model.SerializeToString(deterministic=True)
    monkeypatch.setattr(model_io, "LARGE_WEIGHTS", 0)
    monkeypatch.setattr(model_io, "WEIGHT_MIN_BYTES", 0)  # every weight of the tiny builders
    assert run(model).SerializeToString(deterministic=True) == expected
    assert model.SerializeToString(deterministic=True) == before


def test_canonicalize_keeps_the_weights_of_a_large_model(large):
    model = _two_matmuls()
    canonical = builders.canonical(model).model
    assert _arrays(canonical).keys() == _arrays(model).keys()
    for name, array in _arrays(model).items():
        np.testing.assert_array_equal(_arrays(canonical)[name], array)
    shapes = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in canonical.graph.value_info}
    assert shapes == {"m": ["N", 64], "h": ["N", 64], "wf": [64, 64], "m2": ["N", 64]}
