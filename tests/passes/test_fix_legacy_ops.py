"""Opset-6 PRelu with a [C] slope keeps its per-channel meaning through the opset upgrade."""

from __future__ import annotations

import numpy as np
from onnx import numpy_helper

from onnxmp.passes import CANONICALIZE
from onnxmp.passes.fix_legacy_ops import fix_legacy_ops
from tests import hard_models, oracles


def test_prelu_slope_per_channel_becomes_c11():
    fixed = fix_legacy_ops(hard_models.prelu_opset6())
    slope = next(i for i in fixed.graph.initializer if i.name == "slope")
    assert list(slope.dims) == [4, 1, 1]


def test_canonical_prelu_computes_the_opset6_meaning():
    model = hard_models.prelu_opset6()
    for run in CANONICALIZE:
        model = run(model)
    x = hard_models.CALIBRATION["prelu_opset6"]()["x"][:2]
    w = {i.name: numpy_helper.to_array(i) for i in hard_models.prelu_opset6().graph.initializer}["w"]
    c = np.einsum("oc,nchw->nohw", w.reshape(4, 3), x)  # the 1x1 conv
    slope = np.array([0.1, 0.2, 0.3, 0.4], np.float32)[None, :, None, None]
    expected = np.where(c > 0, c, slope * c)  # opset 6: slope k on channel k
    np.testing.assert_allclose(oracles.run(model, {"x": x})["y"], expected, rtol=1e-5, atol=1e-6)


def test_other_models_are_returned_as_they_are():
    model = hard_models.softmax_opset11()
    assert fix_legacy_ops(model) is model
    legacy = hard_models.prelu_opset6()
    assert fix_legacy_ops(legacy) is not legacy  # opset 6 with a PRelu: a fixed copy
