"""fuse_gelu: the five-op erf GELU of exports becomes one Gelu, outputs unchanged."""

from __future__ import annotations

import onnx
import pytest

from onnxmp.passes.canonicalize import upgrade_opset
from onnxmp.passes.fuse_gelu import fuse_gelu
from tests import builders, oracles

GELU_OPS = ["gelu/Div", "gelu/Erf", "gelu/Add", "gelu/Mul", "gelu/Mul_1"]


def _ops(model: onnx.ModelProto) -> list[tuple[str, str]]:
    return [(n.name, n.op_type) for n in model.graph.node]


def test_erf_gelu_becomes_one_gelu_op():
    model = upgrade_opset(builders.attention_block())
    fused = fuse_gelu(model)
    names = [name for name, _ in _ops(model)]
    at = names.index("gelu/Div")
    expected = [*_ops(model)[:at], ("gelu/Gelu", "Gelu"), *_ops(model)[at + len(GELU_OPS):]]
    assert names[at:at + 5] == GELU_OPS
    assert _ops(fused) == expected
    gelu = fused.graph.node[at]
    assert (list(gelu.input), list(gelu.output)) == (["f"], ["g"])
    onnx.checker.check_model(fused, full_check=True)
    oracles.assert_same_outputs(model, fused, builders.feeds_for(model, batch=3), atol=1e-5)


def test_half_first_variant_is_fused():
    # y = (x * 0.5) * (1 + erf(x / sqrt 2)): the 0.5 scaling before the product
    model = upgrade_opset(builders.attention_block())
    nodes = {n.name: n for n in model.graph.node}
    nodes["gelu/Mul_1"].input[:] = ["f", "half"]
    nodes["gelu/Mul_1"].output[:] = ["f_half"]
    nodes["gelu/Mul"].input[:] = ["f_half", "g_plus"]
    nodes["gelu/Mul"].output[:] = ["g"]
    order = [n for n in model.graph.node if n.name != "gelu/Mul_1"]
    order.insert([n.name for n in order].index("gelu/Mul"), nodes["gelu/Mul_1"])
    del model.graph.node[:]
    model.graph.node.extend(order)
    fused = fuse_gelu(model)
    assert [op for _, op in _ops(fused)].count("Gelu") == 1
    assert not {"Erf", "Div"} & {op for name, op in _ops(fused) if name.startswith("gelu")}
    oracles.assert_same_outputs(model, fused, builders.feeds_for(model, batch=3), atol=1e-5)


@pytest.mark.parametrize("constant", ["sqrt_2", "one"])
def test_other_constants_are_no_gelu(constant):
    # x / 1 instead of x / sqrt 2 (or + sqrt 2 instead of + 1) is not GELU: nothing fused
    model = upgrade_opset(builders.attention_block())
    for node in model.graph.node:
        if node.name == ("gelu/Div" if constant == "sqrt_2" else "gelu/Add"):
            node.input[1] = "one" if constant == "sqrt_2" else "sqrt_2"
    assert _ops(fuse_gelu(model)) == _ops(model)


def test_below_opset_20_nothing_changes():
    model = builders.attention_block()  # opset 17: no Gelu op
    assert fuse_gelu(model).SerializeToString() == model.SerializeToString()


def test_an_intermediate_read_twice_blocks_the_fusion():
    model = upgrade_opset(builders.attention_block())
    model.graph.output.append(onnx.helper.make_tensor_value_info("g_erf", onnx.TensorProto.FLOAT, None))
    assert "Gelu" not in {op for _, op in _ops(fuse_gelu(model))}
