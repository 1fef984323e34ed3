"""check_canonical: the canonical model must run and agree with the original, or the pass is named."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import pytest

from onnxmp.errors import PassError
from onnxmp.passes import CANONICALIZE
from onnxmp.passes.check_canonical import check_canonical
from tests import builders, hard_models


def _canonical(model):
    for run in CANONICALIZE:
        model = run(model)
    return model


@pytest.mark.parametrize("name", ["conv_bn", "pad_shape_chain", "residual_add"])
def test_canonical_builders_pass(name):
    model = builders.BUILDERS[name]()
    check_canonical(model, _canonical(model), builders.feeds_for(model, batch=2), CANONICALIZE)


def test_legacy_prelu_passes_though_ort_cannot_run_the_original():
    model = hard_models.prelu_opset6()
    feeds = {"x": hard_models.CALIBRATION["prelu_opset6"]()["x"][:2]}
    check_canonical(model, _canonical(model), feeds, CANONICALIZE)


def _breaking_pass(model: onnx.ModelProto) -> onnx.ModelProto:
    """A stand-in for a buggy pass: doubles the first Conv's weight."""
    result = onnx.ModelProto()
    result.CopyFrom(model)
    weight = next(i for i in result.graph.initializer if i.name == "w")
    weight.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(weight) * 2, "w"))
    return result


def test_a_pass_that_changes_the_outputs_is_named():
    model = builders.conv_relu()
    passes = (*CANONICALIZE[:2], _breaking_pass, *CANONICALIZE[2:])
    broken = model
    for run in passes:
        broken = run(broken)
    with pytest.raises(PassError, match=r"after pass _breaking_pass, output 'y' differs from the original by"):
        check_canonical(model, broken, builders.feeds_for(model, batch=2), passes)


def test_a_model_that_no_longer_runs_is_named():
    model = hard_models.prelu_opset6()
    feeds = {"x": hard_models.CALIBRATION["prelu_opset6"]()["x"][:2]}

    def upgrade_without_fix(m):  # the converter alone: [4] slope against W = 5
        from onnx import version_converter

        return version_converter.convert_version(m, 21)

    passes = (CANONICALIZE[0], upgrade_without_fix)
    broken = upgrade_without_fix(CANONICALIZE[0](model))
    with pytest.raises(PassError, match="after pass upgrade_without_fix, ONNX Runtime cannot run it"):
        check_canonical(model, broken, feeds, passes)
    assert np.isfinite(feeds["x"]).all()


def test_a_pass_that_changes_an_input_rank_is_named():
    # found by the fuzz suite: x is both the input [N,4] and an output declared rank 0; the
    # version converter then gives the input the output's (empty) shape
    model = onnx.parser.parse_model(
        '<ir_version: 8, opset_import: ["" : 17]> g (float[N,4] x) => (float[N,4] y, float x) { [relu] y = Relu (x) }'
    )
    feeds = {"x": np.ones((2, 4), np.float32)}
    broken = model
    for run in CANONICALIZE:
        broken = run(broken)
    with pytest.raises(PassError, match="after pass upgrade_opset, input 'x' has rank 0, the original 2"):
        check_canonical(model, broken, feeds, CANONICALIZE)
