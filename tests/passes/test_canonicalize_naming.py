"""Every canonicalization pass leaves every node named (the graph index refuses unnamed nodes).

Issue 9: upgrading an opset-11 Softmax on a 4-D input to opset 13 adds unnamed nodes after
`name_nodes` ran; the index then refused the model (exit 3).
"""

from __future__ import annotations

import pytest

from onnxmp import graph as graph_index
from onnxmp.passes import CANONICALIZE
from tests import builders, hard_models

MODELS = {**builders.BUILDERS, "softmax_opset11": hard_models.softmax_opset11, "if_branch": hard_models.if_branch}


def _before(run, model):
    """`model` after the passes that come before `run` in CANONICALIZE."""
    for earlier in CANONICALIZE[: CANONICALIZE.index(run)]:
        model = earlier(model)
    return model


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("run", list(CANONICALIZE), ids=lambda run: run.__name__)
def test_every_pass_leaves_every_node_named_once(run, name):
    result = run(_before(run, MODELS[name]()))
    names = [n.name for n in result.graph.node]
    assert all(names) and len(set(names)) == len(names)


def test_upgrading_an_opset11_softmax_adds_nodes_and_names_them():
    # Softmax-11 on [N,4,4,4] with axis 1 normalizes over C*H*W = 64 values: the adapter
    # rewrites it as Flatten -> Softmax-13 -> Reshape(Shape(x)), i.e. 3 extra nodes
    upgraded = CANONICALIZE[1](CANONICALIZE[0](hard_models.softmax_opset11()))
    ops = [n.op_type for n in upgraded.graph.node]
    assert ops == ["Conv", "Shape", "Flatten", "Softmax", "Reshape"]
    graph_index.build(upgraded)  # raises on an unnamed node
