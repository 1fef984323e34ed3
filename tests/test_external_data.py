"""Models beyond the 2 GB protobuf limit: weightless copies, external-data saves, passes, sessions,
phase-1 jobs, MAC counting, `--debug` verification and a whole `quantize` run.

A real model over 2 GB is too heavy for the test suite (a 2-core machine, a 10-minute suite),
so the `large` fixture lowers the limits instead: `SizeLimits.protobuf` to 1 byte (every
model is saved with external data) and `large_weights` to 0 (every pass and session works on a
weightless copy), passed as the keyword `limits`. `weight_min_bytes` keeps its 1 KiB, so the
model below has both kinds of initializer: external (w, wq) and inline (b, shape). The pipeline
does not take `limits` yet: runs through it lower `large_model.DEFAULT_LIMITS` instead
(`pipeline_defaults`).
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxmp import bops, hw_profile, large_model, model_io, pipeline, run_records, runtime, steps
from onnxmp import encodings as encodings_format
from onnxmp.calib_data import CalibrationSet
from onnxmp.errors import ModelError, PassError
from onnxmp.large_model import SizeLimits
from onnxmp.passes import CANONICALIZE, fold_batchnorm, name_nodes
from onnxmp.passes.calibrate import calibrate
from onnxmp.passes.quantizer_groups import quantizer_groups
from onnxmp.phase1 import sensitivity
from onnxmp.phase1.executors import Placement
from onnxmp.phase1.jobs import run_job
from onnxmp.records import ExecutorKind
from tests import builders

MODELS = Path(__file__).resolve().parents[1] / "models"


LARGE = SizeLimits(protobuf=1, large_weights=0)
EVERY_WEIGHT = SizeLimits(protobuf=1, large_weights=0, weight_min_bytes=0)  # every weight of the tiny builders


@pytest.fixture
def large() -> SizeLimits:
    return LARGE


@pytest.fixture
def pipeline_defaults(monkeypatch):
    """Lower the default limits, for runs through the pipeline (which passes no `limits` yet)."""

    def lower(limits: SizeLimits) -> SizeLimits:
        monkeypatch.setattr(large_model, "DEFAULT_LIMITS", limits)
        return limits

    return lower


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
    path = model_io.save(model, tmp_path / "m.onnx", limits=large)
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
    loaded = model_io.load(model_io.save(model, tmp_path / "m.onnx", limits=large))
    expected, got = _arrays(model), _arrays(loaded)
    assert list(got) == list(expected)
    for name, array in expected.items():
        assert got[name].dtype == array.dtype
        np.testing.assert_array_equal(got[name], array)
    assert loaded.graph.node == model.graph.node


def test_external_save_replaces_both_files(tmp_path, large):
    path = model_io.save(_two_matmuls(), tmp_path / "m.onnx", limits=large)
    other = _two_matmuls(typed_int8=False)
    other.graph.initializer[0].raw_data = bytes(16384)
    model_io.save(other, path, limits=large)
    assert not model_io.load(path).graph.initializer[0].raw_data.strip(b"\0")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]


def test_failed_external_save_keeps_the_old_model_and_no_temporary(tmp_path, large):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"old model")
    (tmp_path / "m.onnx.data").mkdir()  # the data file cannot be moved into place
    with pytest.raises(OSError):
        model_io.save(_two_matmuls(), path, limits=large)
    assert path.read_bytes() == b"old model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]


def test_load_session_run_save_end_to_end(tmp_path, large):
    model = _two_matmuls()
    feeds = builders.feeds_for(model, batch=3)
    expected = runtime.session(_serialized_path(tmp_path, model))  # a path: the usual way
    loaded = model_io.load(model_io.save(model, tmp_path / "out" / "m.onnx", limits=large))
    sess = runtime.session(loaded, limits=large)
    assert [t.name for t in model_io.weights(loaded)] == ["w", "wq"]
    assert len(sess.weights) == 2
    for got, want in zip(sess.run(None, feeds), expected.run(None, feeds), strict=True):
        np.testing.assert_array_equal(got, want)


def _serialized_path(tmp_path, model: onnx.ModelProto) -> str:
    """The model as one ordinary file."""
    path = tmp_path / "whole.onnx"
    path.write_bytes(model.SerializeToString())
    return str(path)


def test_validate_checks_the_weightless_copy(large):
    model = _two_matmuls()
    model_io.validate(model, limits=large)
    model.graph.node[1].input[0] = "ghost"
    with pytest.raises(ModelError, match="ghost"):
        model_io.validate(model, limits=large)


def _pass_cases():
    for run in CANONICALIZE:
        for name in builders.BUILDERS:
            yield pytest.param(run, name, id=f"{run.__name__}-{name}")


@pytest.mark.parametrize(("run", "name"), list(_pass_cases()))
def test_canonicalize_on_weightless_copies_gives_the_same_bytes(run, name):
    model = builders.BUILDERS[name]()
    expected = run(model).SerializeToString(deterministic=True)
    before = model.SerializeToString(deterministic=True)
    large = run(model) if run is name_nodes else run(model, limits=EVERY_WEIGHT)
    assert large.SerializeToString(deterministic=True) == expected
    assert model.SerializeToString(deterministic=True) == before


def test_canonicalize_keeps_the_weights_of_a_large_model(large):
    model = _two_matmuls()
    canonical = builders.canonical(model, limits=large).model
    assert _arrays(canonical).keys() == _arrays(model).keys()
    for name, array in _arrays(model).items():
        np.testing.assert_array_equal(_arrays(canonical)[name], array)
    shapes = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in canonical.graph.value_info}
    assert shapes == {"m": ["N", 64], "h": ["N", 64], "wf": [64, 64], "m2": ["N", 64]}


def _stubbed(model: onnx.ModelProto) -> list[str]:
    return [t.name for t in model.graph.initializer if model_io.is_stub(t)]


def test_a_packed_large_model_carries_its_weights_as_arrays_beside_a_weightless_copy(large):
    model = _two_matmuls()
    model.graph.initializer[0].doc_string = "onnxmp:from=w0"
    packed = pickle.loads(pickle.dumps(model_io.pack(model, limits=large)))  # as a pool worker receives it
    assert sorted(packed.weights) == ["w", "wq"]
    assert packed.weights["wq"].dtype == np.int8 and packed.weights["wq"].shape == (64, 64)
    assert len(packed.structure) < 1024
    unpacked = model_io.unpack(packed)
    assert unpacked.graph.node == model.graph.node and not _stubbed(unpacked)
    assert unpacked.graph.initializer[0] == model.graph.initializer[0]  # doc_string kept
    assert unpacked.graph.initializer[2].raw_data  # wq: int32_data came back as raw bytes
    for name, array in _arrays(model).items():
        np.testing.assert_array_equal(_arrays(unpacked)[name], array, err_msg=name)


def test_a_packed_small_model_is_its_serialization():
    model = _two_matmuls()
    packed = model_io.pack(model)
    assert packed.weights == {} and packed.structure == model.SerializeToString()
    assert model_io.unpack(packed) == model


def _entries(jobs) -> list[dict]:
    """What the jobs measure, run as a spawned worker gets them (pickled, normal thresholds)."""
    return [
        {k: v for k, v in result.to_entry().items() if k != "seconds"}
        for job in jobs for result in run_job(pickle.loads(pickle.dumps(job)))
    ]


def test_phase1_jobs_of_a_large_model_carry_its_weights_as_arrays(monkeypatch):
    # split_jobs takes no `limits` yet: its pack follows the lowered default
    canon = builders.canonical(builders.residual_add())
    profile = hw_profile.load_profile("research")
    analysis = quantizer_groups(canon.graph, profile)
    calib = CalibrationSet(builders.feeds_for(canon.model, batch=8))
    encodings = calibrate(canon.model, canon.graph, analysis, calib, profile=profile)
    pending = frozenset((g.id, c) for g in analysis.groups for c in g.candidates)
    context = sensitivity.context_for(canon.model, analysis, encodings, calib, batch_size=4)

    def split():
        return sensitivity.split_jobs(context, pending, Placement(jobs=2))

    expected = split()
    monkeypatch.setattr(large_model, "DEFAULT_LIMITS", EVERY_WEIGHT)
    jobs = split()
    monkeypatch.undo()
    assert len(jobs) == 2 and jobs[0].model is jobs[1].model  # one set of arrays for all jobs
    assert sorted(jobs[0].model.weights) == sorted(t.name for t in model_io.weights(canon.model, min_bytes=0)) != []
    assert expected[0].model.weights == {}
    assert _entries(jobs) == _entries(expected)


def test_prepared_original_holds_names_but_no_weights(pipeline_defaults):
    pipeline_defaults(EVERY_WEIGHT)
    model = builders.conv_bn()
    calib = CalibrationSet(builders.feeds_for(model, batch=4))
    prepared = steps.prepare(model, hw_profile.load_profile("npu"), calib)
    assert _stubbed(prepared.original) == ["w"]  # the BN vectors are small: inline
    assert prepared.original.graph.node == model.graph.node
    names = encodings_format.original_names(model, prepared.model)
    assert encodings_format.original_names(prepared.original, prepared.model) == names
    assert names["w_bnfold"] == "w"


def test_verify_checks_a_large_model_after_every_pass_without_its_weights(pipeline_defaults, monkeypatch):
    pipeline_defaults(EVERY_WEIGHT)
    checked = []
    check_model = onnx.checker.check_model
    monkeypatch.setattr(onnx.checker, "check_model", lambda m, *a, **k: (checked.append(m), check_model(m, *a, **k)))
    model = builders.conv_bn()
    canonical = steps.run_passes(model, CANONICALIZE, verify=True)
    assert len(checked) == len(CANONICALIZE)
    assert all(not t.raw_data for m in checked for t in m.graph.initializer if len(t.dims) > 1)
    assert canonical == builders.canonical(model).model


def test_verify_names_the_pass_that_broke_the_model(pipeline_defaults):
    pipeline_defaults(LARGE)
    def break_graph(model: onnx.ModelProto) -> onnx.ModelProto:
        broken = onnx.ModelProto()
        broken.CopyFrom(model)
        broken.graph.node[0].input[0] = "ghost"
        return broken

    with pytest.raises(PassError, match="after pass break_graph: invalid ONNX model: .*ghost"):
        steps.run_passes(_two_matmuls(), [break_graph], verify=True)


@pytest.mark.parametrize("name", ["conv_relu", "flatten_gemm", "pad_shape_chain", "conv_transpose", "batched_matmul"])
def test_macs_of_a_large_model_come_from_shapes_inferred_without_weights(name, monkeypatch):
    model = builders.canonical(builders.BUILDERS[name]()).model
    sample_shapes = {k: v.shape for k, v in builders.feeds_for(model, batch=5).items()}
    expected = bops.concrete_graph(model, sample_shapes)
    inferred = []
    infer_shapes = onnx.shape_inference.infer_shapes
    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", lambda m, **k: (inferred.append(_stubbed(m)), infer_shapes(m, **k))[1])
    got = bops.concrete_graph(model, sample_shapes, limits=EVERY_WEIGHT)
    assert inferred == [[t.name for t in model_io.weights(model, limits=EVERY_WEIGHT)]] and inferred[0]
    assert bops.macs_per_op(got) == bops.macs_per_op(expected) != {}
    assert got.shapes == expected.shapes


@pytest.mark.parametrize("name", ["conv_bn", "gemm_bn", "conv_bn_shared"])
def test_fold_batchnorm_hands_graphsurgeon_no_weights(name, monkeypatch):
    model = builders.BUILDERS[name]()
    expected = fold_batchnorm(model)
    seen = []
    import_onnx = gs.import_onnx
    monkeypatch.setattr(gs, "import_onnx", lambda m, *a, **k: (seen.append(_stubbed(m)), import_onnx(m, *a, **k))[1])
    folded = fold_batchnorm(model, limits=EVERY_WEIGHT)
    assert seen == [["w"]]  # the weight matrix; BN vectors are small and stay inline
    assert not _stubbed(folded)
    assert folded.SerializeToString(deterministic=True) == expected.SerializeToString(deterministic=True)


# --- a whole run: digits on the research profile, every weight treated as large --------------


def _quantize(out: Path, **settings) -> Path:
    pipeline.quantize(
        MODELS / "digits_cnn.onnx", profile="research", calib=MODELS / "digits_calib.npz", output_dir=out,
        target_bops=0.3, settings=run_records.Settings(**settings),
    )
    return out


@pytest.fixture(scope="module")
def normal_run(tmp_path_factory) -> Path:
    return _quantize(tmp_path_factory.mktemp("normal"), executor=ExecutorKind.LOCAL)


@pytest.mark.parametrize(
    "settings", [{"executor": ExecutorKind.LOCAL}, {"executor": ExecutorKind.PROCESSES, "workers": 2}], ids=["local", "processes"]
)
def test_quantize_treating_every_weight_as_large_gives_the_same_results(normal_run, settings, pipeline_defaults, tmp_path):
    pipeline_defaults(EVERY_WEIGHT)
    # spawned workers import large_model afresh (default limits): the jobs carry the split
    out = _quantize(tmp_path, **settings)
    for name in ("plan.json", "sensitivity.json", "encodings.json"):
        assert json.loads((out / name).read_text()) == json.loads((normal_run / name).read_text()), name
    assert (out / "model.qdq.onnx.data").is_file()  # saved with external data
    expected, got = model_io.load(normal_run / "model.qdq.onnx"), model_io.load(out / "model.qdq.onnx")
    assert got.graph.node == expected.graph.node
    assert _arrays(got).keys() == _arrays(expected).keys()
    for name, array in _arrays(expected).items():
        np.testing.assert_array_equal(_arrays(got)[name], array, err_msg=name)
