"""fold_batchnorm: Conv/Gemm + BN fold to the hand formula; BNs that cannot fold are kept."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from onnxmp import graph, hw_profile
from onnxmp.passes import fold_batchnorm
from onnxmp.passes.fold_batchnorm import bn_site, why_not_foldable
from onnxmp.passes.quantizer_groups import quantizer_groups
from tests import builders, oracles


def _initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}


def _node(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.name == name)


def test_conv_bn_folds(conv_bn):
    folded = fold_batchnorm(conv_bn)
    assert [(n.name, n.op_type) for n in folded.graph.node] == [("conv", "Conv"), ("relu", "Relu")]
    oracles.assert_same_outputs(conv_bn, folded, builders.feeds_for(conv_bn, batch=3), atol=1e-5)
    # W' = W * gamma / sqrt(var + eps) per output channel (axis 0); b' = (b - mean) * factor + beta
    params = _initializers(conv_bn)
    weight, bias = oracles.fold_bn(params["w"], params["b"], params, axis=0, eps=1e-3)
    conv = _node(folded, "conv")
    new = _initializers(folded)
    np.testing.assert_allclose(new[conv.input[1]], weight, rtol=1e-6)
    np.testing.assert_allclose(new[conv.input[2]], bias, rtol=1e-6, atol=1e-7)
    assert conv.output[0] == "n"


@pytest.mark.parametrize(("trans_b", "axis"), [(True, 0), (False, 1)])
def test_gemm_bn_folds(trans_b, axis):
    model = builders.gemm_bn(trans_b=trans_b)
    folded = fold_batchnorm(model)
    assert [n.op_type for n in folded.graph.node] == ["Gemm", "Relu"]
    oracles.assert_same_outputs(model, folded, builders.feeds_for(model, batch=5), atol=1e-5)
    params = _initializers(model)
    weight, bias = oracles.fold_bn(params["w"], params["b"], params, axis=axis, eps=1e-5)
    gemm = _node(folded, "fc")
    np.testing.assert_allclose(_initializers(folded)[gemm.input[1]], weight, rtol=1e-6)
    np.testing.assert_allclose(_initializers(folded)[gemm.input[2]], bias, rtol=1e-6, atol=1e-7)


def test_conv_without_bias_gets_one():
    model = builders.conv_bn_output()
    del model.graph.output[1]  # keep only y: c now feeds only the BN
    folded = fold_batchnorm(model)
    conv = _node(folded, "conv")
    assert len(conv.input) == 3
    assert [n.op_type for n in folded.graph.node] == ["Conv"]
    oracles.assert_same_outputs(model, folded, builders.feeds_for(model), atol=1e-5)


def test_bn_with_a_second_consumer_of_its_input_is_kept(conv_bn_shared, caplog):
    with caplog.at_level(logging.DEBUG, logger="onnxmp.passes.fold_batchnorm"):
        kept = fold_batchnorm(conv_bn_shared)
    assert [n.op_type for n in kept.graph.node] == ["Conv", "BatchNormalization", "Relu", "Add"]
    assert _initializers(kept).keys() == _initializers(conv_bn_shared).keys()
    assert "keep bn: output of conv has consumers besides the BN" in caplog.messages
    oracles.assert_same_outputs(conv_bn_shared, kept, builders.feeds_for(conv_bn_shared), atol=0)


def test_gemm_with_alpha_is_kept(caplog):
    model = builders.gemm_bn()
    model.graph.node[0].attribute.append(helper.make_attribute("alpha", 2.0))
    with caplog.at_level(logging.DEBUG, logger="onnxmp.passes.fold_batchnorm"):
        kept = fold_batchnorm(model)
    assert [n.op_type for n in kept.graph.node] == ["Gemm", "BatchNormalization", "Relu"]
    assert "keep bn: Gemm fc has alpha/beta != 1 or transA" in caplog.messages


def test_input_is_not_mutated(conv_bn):
    before = conv_bn.SerializeToString()
    fold_batchnorm(conv_bn)
    assert conv_bn.SerializeToString() == before


def test_bn_whose_input_is_a_graph_output_is_kept():
    model = builders.conv_bn_output()
    result = fold_batchnorm(model)
    onnx.checker.check_model(result, full_check=True)
    oracles.assert_same_outputs(model, result, builders.feeds_for(model), atol=1e-5)


def test_two_bns_on_a_shared_weight_fold_separately():
    model = builders.shared_weight_conv_bn()
    result = fold_batchnorm(model)
    onnx.checker.check_model(result, full_check=True)
    oracles.assert_same_outputs(model, result, builders.feeds_for(model), atol=1e-5)


@pytest.mark.parametrize("profile_name", ["npu", "research"])
def test_the_reason_a_bn_is_kept_reaches_the_left_in_float_list(conv_bn_shared, profile_name):
    canon = builders.canonical(conv_bn_shared)
    analysis = quantizer_groups(canon.graph, hw_profile.load_profile(profile_name))
    (bn,) = [s for s in analysis.skipped if s.op_type == "BatchNormalization"]
    assert bn.node == "bn"
    assert bn.reason == (
        "BatchNormalization not folded (output of conv has consumers besides the BN); "
        f"runs in float on profile {profile_name}"
    )


def test_why_not_foldable_reads_the_same_reason_from_an_indexed_model():
    model = builders.gemm_bn()
    model.graph.node[0].attribute.append(helper.make_attribute("alpha", 2.0))
    index = graph.build(model)
    site = bn_site(index, index.nodes["bn"])
    assert why_not_foldable(site) == "Gemm fc has alpha/beta != 1 or transA"
    assert why_not_foldable(bn_site(graph.build(builders.gemm_bn()), graph.build(builders.gemm_bn()).nodes["bn"])) is None
