"""`extract_subgraph.cut_before`: what a walk must hold to run a node and everything after it.

Hand-read from the builders' diagrams: the residual block's skip tensor r1 stays in the cut
until the Add reads it; the integer pads of `pad_shape_chain` never cross a cut (their
producers are recomputed with the nodes after it), so only the image does. The models go
through shape inference first: a tensor of unknown dtype counts as non-float, so without it
every cut falls back to the graph inputs (correct, but the walk would gain nothing).
"""

from __future__ import annotations

import pytest

from onnxmp.graph import build
from onnxmp.passes.canonicalize import infer_shapes
from onnxmp.passes.extract_subgraph import cut_before
from tests import builders


@pytest.mark.parametrize(
    ("node", "cut"),
    [("conv1", ("x",)), ("relu1", ("c1",)), ("conv2", ("r1",)), ("add", ("r1", "c2"))],
)
def test_residual_cut_keeps_the_skip_tensor(node: str, cut: tuple[str, ...]) -> None:
    assert cut_before(build(infer_shapes(builders.residual_add())), node) == cut


def test_integer_shape_arithmetic_never_crosses_a_cut() -> None:
    graph = build(infer_shapes(builders.pad_shape_chain()))
    assert cut_before(graph, "pad") == ("x",)
    assert cut_before(graph, "conv") == ("xp",)
