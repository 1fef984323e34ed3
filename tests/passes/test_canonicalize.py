"""Canonicalization: the pass contracts on every builder, and each pass's own rule cases."""

from __future__ import annotations

import onnx
import pytest

from onnxmp import graph as graph_index
from onnxmp.passes import CANONICALIZE, fold_constants, infer_shapes, name_nodes, upgrade_opset
from onnxmp.passes.canonicalize import TARGET_OPSET
from tests import builders, oracles


def _cases():
    for run in CANONICALIZE:
        for name in builders.BUILDERS:
            yield pytest.param(run, name, id=f"{run.__name__}-{name}")


@pytest.mark.parametrize(("run", "name"), list(_cases()))
def test_input_is_not_mutated(run, name):
    model = builders.BUILDERS[name]()
    before = model.SerializeToString(deterministic=True)
    run(model)
    assert model.SerializeToString(deterministic=True) == before


@pytest.mark.parametrize(("run", "name"), list(_cases()))
def test_running_twice_equals_running_once(run, name):
    once = run(builders.BUILDERS[name]())
    twice = run(once)
    assert twice.SerializeToString(deterministic=True) == once.SerializeToString(deterministic=True)


@pytest.mark.parametrize(("run", "name"), list(_cases()))
def test_result_passes_the_checker(run, name):
    onnx.checker.check_model(run(builders.BUILDERS[name]()), full_check=True)


@pytest.mark.parametrize(("run", "name"), list(_cases()))
def test_outputs_are_unchanged(run, name):
    model = builders.BUILDERS[name]()
    oracles.assert_same_outputs(model, run(model), builders.feeds_for(model, batch=3), atol=1e-5)


def test_name_nodes_names_unnamed_nodes_by_op_type():
    model = builders.residual_add()
    for node in model.graph.node:
        node.name = ""
    assert [n.name for n in name_nodes(model).graph.node] == ["Conv", "Relu", "Conv_1", "Add"]


def test_name_nodes_renames_later_duplicates():
    model = builders.residual_add()
    for node in model.graph.node:
        node.name = "block"
    model.graph.node[2].name = "conv2"
    assert [n.name for n in name_nodes(model).graph.node] == [
        "block",
        "block_1",
        "conv2",
        "block_2",
    ]


def test_name_nodes_avoids_tensor_names():
    # a tensor is already called "Relu": the unnamed Relu node must not take that name
    model = builders.conv_relu()
    model.graph.node[1].name = ""
    model.graph.node[1].input[0] = "Relu"
    model.graph.node[0].output[0] = "Relu"
    assert [n.name for n in name_nodes(model).graph.node] == ["conv", "Relu_1"]


def test_upgrade_opset_to_21():
    model = upgrade_opset(builders.conv_relu())
    assert [(o.domain, o.version) for o in model.opset_import] == [("", TARGET_OPSET)]
    assert TARGET_OPSET == 21
    assert model.ir_version >= 10


def test_upgrade_opset_keeps_newer_models():
    model = upgrade_opset(builders.conv_relu())
    again = upgrade_opset(model)
    assert again is not model
    assert again == model


def test_infer_shapes_keeps_the_batch_symbolic():
    graph = graph_index.build(infer_shapes(builders.flatten_gemm()))
    assert graph.shapes["c"] == ("N", 2, 4, 4)
    assert graph.shapes["f"] == ("N", 32)
    assert graph.elem_types["r"] == onnx.TensorProto.FLOAT


def test_fold_constants_folds_the_padding_chain():
    model = fold_constants(builders.pad_shape_chain())
    assert [(n.name, n.op_type) for n in model.graph.node] == [("pad", "Pad"), ("conv", "Conv")]
    graph = graph_index.build(model)
    pads = graph.nodes["pad"].input[1]
    assert graph.constant(pads).tolist() == [0, 0, 0, 0, 0, 0, 1, 1]
    assert pads in {init.name for init in model.graph.initializer}


def test_canonicalize_folds_the_padding_chain():
    ops = [n.op_type for n in builders.canonical(builders.pad_shape_chain()).model.graph.node]
    assert ops == ["Pad", "Conv"]


def test_constant_weight_becomes_an_initializer():
    original = builders.constant_weight_conv()
    value = onnx.numpy_helper.to_array(original.graph.node[0].attribute[0].t)
    model = fold_constants(original)
    assert [n.op_type for n in model.graph.node] == ["Conv"]
    inits = {init.name: onnx.numpy_helper.to_array(init) for init in model.graph.initializer}
    assert list(inits) == ["w"]
    assert (inits["w"] == value).all()


@pytest.mark.shared
def test_efficientnet_lite0(shared_dir):
    original = onnx.load(str(shared_dir / "models" / "efficientnet_lite0.onnx"))
    before = {n.op_type for n in original.graph.node}
    assert {"ConstantOfShape", "Slice", "Cast"} <= before
    model = original
    for run in CANONICALIZE:
        model = run(model)
        onnx.checker.check_model(model)
    ops = [n.op_type for n in model.graph.node]
    assert not {"ConstantOfShape", "Slice", "Cast", "Constant"} & set(ops)
    assert ops.count("Conv") == 49
    assert ops.count("Pad") == 17
    feeds = builders.feeds_for(original, batch=2, seed=0)
    oracles.assert_same_outputs(original, model, feeds, atol=1e-4)
