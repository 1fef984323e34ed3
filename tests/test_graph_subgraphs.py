"""The graph index sees the outer tensors If/Loop subgraphs read (issue 9, control flow).

Before: `c`, read only inside the If branches, had no consumer in the index, so the
quantizer group of conv1 had an empty suffix (ORT: "At least one output should be
requested") and segments of the frontier walk put the If before conv1 ("not topologically
sorted").
"""

from __future__ import annotations

from onnxmp import graph as graph_index
from onnxmp.passes.extract_subgraph import frontier, producing_nodes, subgraph
from tests import hard_models, oracles


def test_if_reads_the_outer_tensor_of_its_branches():
    index = graph_index.build(hard_models.if_branch())
    assert index.implicit_inputs == {"if": ("c",)}
    assert index.consumers_of["c"] == ("if",)
    assert index.reads("if") == ("cond", "c")
    assert index.digraph.has_edge("conv1", "if")


def test_loop_body_reads_the_outer_tensor_and_it_is_counted_once():
    index = graph_index.build(hard_models.loop_body())
    # h is the loop-carried initial value and read inside the body: one consumer entry
    assert index.implicit_inputs == {"loop": ("h",)}
    assert index.consumers_of["h"] == ("loop",)


def test_names_a_branch_defines_are_not_outer_reads():
    model = hard_models.if_branch()
    then_branch = model.graph.node[3].attribute[0].g
    # the branch now computes t2 = Relu(c) and then t = Neg(t2): t2 is its own, c is outer
    then_branch.node[0].output[0] = "t2"
    then_branch.node.add(op_type="Neg", input=["t2"], output=["t"], name="then_neg")
    assert graph_index.outer_reads(model.graph.node[3]) == ("c",)


def test_a_segment_ending_after_the_if_includes_the_branch_input_producer():
    model = hard_models.if_branch()
    index = graph_index.build(model)
    nodes = producing_nodes(index, ["r"], {"x"})
    assert nodes == {"conv1", "reduce_mean", "greater", "if"}
    assert frontier(index, nodes) == ("x",)
    part = subgraph(model, index, nodes, ["x"], ["r"])
    feeds = {"x": hard_models.CALIBRATION["if_branch"]()["x"][:2]}
    full = oracles.run(oracles.with_outputs(model, ["r"]), feeds)
    assert (oracles.run(part, feeds)["r"] == full["r"]).all()
