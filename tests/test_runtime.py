"""runtime: deterministic sessions, batched runs, one-line load errors, large-model weights."""

from __future__ import annotations

import numpy as np
import pytest

from onnxmp import model_io, runtime
from onnxmp.calib_data import CalibrationSet
from onnxmp.errors import InternalError, ModelError, OnnxmpError
from tests import builders, oracles

EVERY_WEIGHT_LARGE = model_io.SizeLimits(large_weights=0, weight_min_bytes=0)


def _run(sess, feeds):
    return sess.run(None, feeds)[0]


def test_sessions_are_repeatable(conv_relu):
    feeds = builders.feeds_for(conv_relu, batch=4)
    first = _run(runtime.session(conv_relu), feeds)
    np.testing.assert_array_equal(_run(runtime.session(conv_relu), feeds), first)
    np.testing.assert_array_equal(_run(runtime.session(conv_relu, threads=1), feeds), first)
    assert first.shape == (4, 4, 8, 8)
    assert first.min() == 0.0  # Relu


@pytest.mark.parametrize("level", [*runtime.Optimization, "basic"])
def test_optimization_levels_agree(conv_relu, level):
    feeds = builders.feeds_for(conv_relu)
    expected = _run(runtime.session(conv_relu), feeds)
    np.testing.assert_allclose(
        _run(runtime.session(conv_relu, optimization=level), feeds), expected, atol=1e-5
    )


def test_session_from_path(tmp_path, conv_relu):
    path = tmp_path / "m.onnx"
    path.write_bytes(conv_relu.SerializeToString())
    assert [o.name for o in runtime.session(str(path)).get_outputs()] == ["y"]


def test_unloadable_user_model_is_a_model_error(conv_relu):
    conv_relu.graph.node[0].input[1] = "ghost"
    with pytest.raises(ModelError) as info:
        runtime.user_session(conv_relu)
    assert str(info.value).startswith("ONNX Runtime cannot load the model: ")
    assert "ghost" in str(info.value)
    assert "\n" not in str(info.value)


def test_unloadable_built_model_is_an_internal_error_not_an_input_error(conv_relu):
    conv_relu.graph.node[0].input[1] = "ghost"
    with pytest.raises(InternalError) as info:
        runtime.session(conv_relu)  # every model onnxmp builds
    assert not isinstance(info.value, OnnxmpError)
    assert str(info.value).startswith("ONNX Runtime cannot load a model onnxmp built: ")


def test_run_batches(conv_relu):
    data = builders.feeds_for(conv_relu, batch=5)
    sess = runtime.session(oracles.with_outputs(conv_relu, ["c"]))
    outputs = list(runtime.run_batches(sess, CalibrationSet(data).batches(2), ["y", "c"]))
    assert [sorted(o) for o in outputs] == [["c", "y"]] * 3
    assert [o["y"].shape[0] for o in outputs] == [2, 2, 1]
    whole = _run(runtime.session(conv_relu), data)
    np.testing.assert_allclose(np.concatenate([o["y"] for o in outputs]), whole, atol=1e-6)


def test_outputs_are_views_of_ort_memory_until_owned(conv_relu):
    # ORT hands out views of its arena (what keeps a dead session's arena resident); owned copies do not
    feeds = builders.feeds_for(conv_relu, batch=2)
    got = runtime.session(conv_relu).run(["y"], feeds)[0]
    assert not got.flags.owndata
    copy = runtime.owned(got)
    assert copy.flags.owndata and copy is not got
    np.testing.assert_array_equal(copy, got)
    assert runtime.owned(copy) is copy  # an array that owns its memory is not copied again


@pytest.mark.parametrize("name", ["conv_relu", "flatten_gemm", "residual_add", "pad_shape_chain", "float_fallbacks"])
@pytest.mark.parametrize("canonical", [False, True], ids=["raw", "canonical"])
def test_large_model_weights_reach_ort_as_arrays_with_identical_results(name, canonical):
    """A model of 2 GB is too heavy for a test: the thresholds are lowered to take that path."""
    model = builders.BUILDERS[name]()
    model = builders.canonical(model).model if canonical else model
    feeds = builders.feeds_for(model, batch=3)
    for simulate in (True, False):
        expected = runtime.session(model, simulate=simulate).run(None, feeds)
        sess = runtime.session(model, simulate=simulate, limits=EVERY_WEIGHT_LARGE)
        assert len(sess.weights) == len(model_io.weights(model, limits=EVERY_WEIGHT_LARGE)) > 0
        for got, want in zip(sess.run(None, feeds), expected, strict=True):
            np.testing.assert_array_equal(got, want)


def test_small_models_are_handed_over_whole(conv_relu):
    assert runtime.session(conv_relu).weights == ()


def test_with_outputs_adds_intermediates_without_editing_the_input(conv_relu):
    before = conv_relu.SerializeToString()
    extended = oracles.with_outputs(conv_relu, ["c", "y", "c"])
    assert conv_relu.SerializeToString() == before
    assert [o.name for o in extended.graph.output] == ["y", "c"]
    c, y = runtime.session(extended).run(["c", "y"], builders.feeds_for(conv_relu))
    np.testing.assert_array_equal(np.maximum(c, 0), y)


def test_an_unknown_optimization_level_is_refused(conv_relu):
    with pytest.raises(ValueError, match="'fastest' is not a valid Optimization"):
        runtime.session(conv_relu, optimization="fastest")
