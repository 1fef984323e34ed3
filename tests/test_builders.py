"""The test models themselves: valid, deterministic, named, with a symbolic batch."""

from __future__ import annotations

import onnx
import pytest

from tests import builders


@pytest.mark.parametrize("name", list(builders.BUILDERS))
def test_builder_is_a_valid_model(name):
    model = builders.BUILDERS[name]()
    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version == 8
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]


@pytest.mark.parametrize("name", list(builders.BUILDERS))
def test_builder_is_deterministic_and_named(name):
    model = builders.BUILDERS[name]()
    assert model.SerializeToString() == builders.BUILDERS[name]().SerializeToString()
    names = [n.name for n in model.graph.node]
    assert all(names)
    assert len(set(names)) == len(names)


@pytest.mark.parametrize("name", list(builders.BUILDERS))
def test_batch_dim_is_symbolic(name):
    model = builders.BUILDERS[name]()
    first = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert first.dim_param == "N"


def test_seed_changes_weights():
    assert builders.conv_relu(seed=1).graph.initializer != builders.conv_relu().graph.initializer


def test_feeds_follow_the_inputs():
    feeds = builders.feeds_for(builders.float_fallbacks(), batch=3)
    assert {k: v.shape for k, v in feeds.items()} == {"x": (3, 3, 4, 4), "wd": (2, 3, 1, 1)}
