"""graph: the dataflow index of a model, read once (literal expectations on residual_add)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from onnxmp import graph as graph_index
from onnxmp.errors import ModelError
from tests import builders


@pytest.fixture
def residual():
    #   x ─ conv1 ─► c1 ─ relu1 ─► r1 ─┬─ conv2 ─► c2 ─┐
    #                                  └───────────────add ─► y
    return builders.canonical(builders.residual_add()).graph


def test_order_inputs_outputs(residual):
    assert residual.order == ("conv1", "relu1", "conv2", "add")
    assert residual.graph_inputs == ("x",)
    assert residual.graph_outputs == ("y",)
    assert residual.index("add") == 3


def test_producers_and_consumers(residual):
    assert residual.producer("c2").name == "conv2"
    assert residual.producer("x") is None
    assert residual.producer("w1") is None
    assert [n.name for n in residual.consumers("r1")] == ["conv2", "add"]
    assert residual.consumers("y") == ()
    assert residual.op_type("relu1") == "Relu"


def test_edges_carry_tensor_names(residual):
    edges = {(a, b): tuple(data["tensors"]) for a, b, data in residual.digraph.edges(data=True)}
    assert edges == {
        ("conv1", "relu1"): ("c1",),
        ("relu1", "conv2"): ("r1",),
        ("relu1", "add"): ("r1",),
        ("conv2", "add"): ("c2",),
    }


def test_constants_types_and_shapes(residual):
    model = builders.residual_add()
    w1 = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "w1"))
    assert residual.is_constant("w1")
    assert not residual.is_constant("r1")
    np.testing.assert_array_equal(residual.constant("w1"), w1)
    assert residual.shapes["r1"] == ("N", 4, 6, 6)
    assert residual.shapes["w1"] == (4, 4, 3, 3)
    assert residual.is_float("c2")
    assert residual.elem_types["x"] == onnx.TensorProto.FLOAT


def test_constant_nodes_are_constants():
    graph = graph_index.build(builders.constant_weight_conv())
    assert graph.is_constant("w")
    assert graph.constant("w").shape == (2, 3, 1, 1)


def test_int_tensors_are_not_float():
    graph = builders.canonical(builders.float_fallbacks()).graph
    assert not graph.is_float("sh")
    assert graph.elem_types["sh"] == onnx.TensorProto.INT64


def test_a_tensor_read_twice_has_one_consumer_entry():
    model = builders.conv_relu()
    model.graph.node[1].op_type = "Add"
    model.graph.node[1].input.append("c")  # y = Add(c, c)
    graph = graph_index.build(model)
    assert graph.consumers_of["c"] == ("relu",)


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (["conv", ""], r"^node 1 \(Relu -> y\) has no name; run canonicalize.name_nodes$"),
        (["same", "same"], r"^node name 'same' is used twice; run canonicalize.name_nodes$"),
    ],
)
def test_nodes_need_unique_names(names, message):
    model = builders.conv_relu()
    for node, name in zip(model.graph.node, names, strict=True):
        node.name = name
    with pytest.raises(ModelError, match=message):
        graph_index.build(model)


def test_unique_name():
    taken = {"x", "x_q", "x_q_1"}
    assert graph_index.unique_name(taken, "x_q") == "x_q_2"
    assert graph_index.unique_name(taken, "x_q") == "x_q_3"
    assert graph_index.unique_name(taken, "y") == "y"
    assert {"x_q_2", "x_q_3", "y"} <= taken


def test_all_names():
    model = builders.conv_relu()
    assert graph_index.all_names(model) == {"conv", "relu", "x", "w", "b", "c", "y"}


def test_get_attribute():
    node = builders.depthwise().graph.node[0]
    assert graph_index.get_attribute(node, graph_index.ATTR_GROUP) == 4
    assert graph_index.get_attribute(node, "pads") == [1, 1, 1, 1]
    assert graph_index.get_attribute(node, "strides", default=[1, 1]) == [1, 1]


@pytest.mark.parametrize(
    ("op_type", "position", "rank", "attrs", "axis"),
    [
        ("Conv", 1, 4, {}, 0),
        ("ConvTranspose", 1, 4, {}, 1),  # weight [C_in, C_out / group, kH, kW]
        ("ConvTranspose", 1, 4, {"group": 2}, None),
        ("Gemm", 1, 2, {}, 1),  # B [K, N]
        ("Gemm", 1, 2, {"transB": 1}, 0),  # B [N, K]
        ("Gemm", 0, 2, {}, None),  # a constant A has no output channel
        ("MatMul", 1, 2, {}, 1),
        ("MatMul", 0, 2, {}, 0),
        ("MatMul", 1, 3, {}, None),  # batched: per tensor
        ("Mul", 1, 1, {}, None),
    ],
)
def test_output_channel_axis(op_type, position, rank, attrs, axis):
    assert graph_index.output_channel_axis(op_type, position, rank, attrs) == axis
