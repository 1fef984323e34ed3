"""quantizer_groups: expected groups written out as records, reasons as strings, invariants."""

from __future__ import annotations

from collections import Counter

import onnx
import pytest

from onnxmp import hw_profile
from onnxmp.passes.fused_ops import fused_ops
from onnxmp.passes.quantizer_groups import WEIGHT_OPS, quantizer_groups
from onnxmp.records import Candidate, QuantizerGroup, SkippedOp
from tests import builders

W8A16, W8A8, W4A8 = Candidate(8, 16), Candidate(8, 8), Candidate(4, 8)
NPU_W = (W8A16, W8A8, W4A8)  # groups with weights choose a kernel
NPU_A = (Candidate(None, 16), Candidate(None, 8))  # weightless groups choose only a_bits


def _analyse(model: onnx.ModelProto, profile: str = "npu"):
    return quantizer_groups(builders.canonical(model).graph, hw_profile.load_profile(profile))


def test_residual_add_ties_both_add_inputs():
    # r1 is read by conv2 and by the add, so conv2, the add, r1 and c2 form one group
    analysis = _analyse(builders.residual_add())
    assert analysis.groups == (
        QuantizerGroup("conv1", ("w1",), ("x",), ("conv1",), NPU_W),
        QuantizerGroup("conv2", ("w2",), ("r1", "c2"), ("conv2", "add"), NPU_W),
    )
    assert analysis.skipped == ()
    assert dict(analysis.anchors) == {"c2": "c2", "r1": "r1", "x": "x"}


def test_concat_inputs_share_one_group():
    # canonical order is conv_a, conv_b, relu_a, concat, conv_c (toposort), and a group's
    # activations follow their producers' order: b (conv_b) before a (relu_a)
    analysis = _analyse(builders.concat_branches())
    assert analysis.groups == (
        QuantizerGroup("conv_a", ("w_a", "w_b"), ("x",), ("conv_a", "conv_b"), NPU_W),
        QuantizerGroup("concat", (), ("b", "a"), ("concat",), NPU_A),
        QuantizerGroup("conv_c", ("w_c",), ("cat",), ("conv_c",), NPU_W),
    )
    assert analysis.skipped == ()


def test_gemm_after_flatten_reads_the_quantizer_before_it():
    analysis = _analyse(builders.flatten_gemm())
    assert analysis.groups == (
        QuantizerGroup("conv", ("w",), ("x",), ("conv",), NPU_W),
        QuantizerGroup("fc", ("fc_w",), ("r",), ("fc",), NPU_W),
    )
    assert dict(analysis.anchors) == {"f": "r", "x": "x"}


def test_one_tensor_feeding_two_convs_is_one_group():
    analysis = _analyse(builders.shared_input_two_convs())
    assert analysis.groups == (
        QuantizerGroup("conv1", ("w1", "w2"), ("x",), ("conv1", "conv2"), NPU_W),
    )


def test_depthwise_and_pointwise_are_separate_groups():
    analysis = _analyse(builders.depthwise())
    assert analysis.groups == (
        QuantizerGroup("dw", ("w_dw",), ("x",), ("dw",), NPU_W),
        QuantizerGroup("pw", ("w_pw",), ("r",), ("pw",), NPU_W),
    )


def test_activation_matmul_ties_both_operands():
    # mm_qk reads q and, through the Transpose, k: one weightless group
    analysis = _analyse(builders.matmul_act_act())
    assert analysis.groups == (
        QuantizerGroup("mm_q", ("w_q", "w_k"), ("x",), ("mm_q", "mm_k"), NPU_W),
        QuantizerGroup("mm_qk", (), ("q", "k"), ("mm_qk",), NPU_A),
    )
    assert dict(analysis.anchors) == {"kt": "k", "q": "q", "x": "x"}


def test_weightless_group_takes_every_activation_width_of_the_profile():
    analysis = _analyse(builders.matmul_act_act(), "research")
    assert analysis.group("mm_qk").candidates == tuple(Candidate(None, a) for a in (16, 8, 6, 4))


def test_two_kernel_profile():
    analysis = _analyse(builders.residual_add(), "w4a8-w8a16")
    assert [g.candidates for g in analysis.groups] == [(W8A16, W4A8), (W8A16, W4A8)]


def test_skipped_ops_and_reasons():
    analysis = _analyse(builders.float_fallbacks())
    assert analysis.groups == (QuantizerGroup("conv", ("w",), ("x",), ("conv",), NPU_W),)
    assert analysis.skipped == (
        SkippedOp("conv_dyn", "Conv", "Conv weight 'wd' is not a constant"),
        SkippedOp("shape", "Shape", "op type Shape runs in float on profile npu"),
        SkippedOp("add_int", "Add", "no float inputs to quantize"),
        SkippedOp("softmax", "Softmax", "op type Softmax runs in float on profile npu"),
        SkippedOp(
            "resize", "Resize", "Resize that interpolates is not data movement; runs in float"
        ),
    )


def test_group_without_a_common_kernel_stays_float(tmp_path):
    # Conv may use W8A8/W4A8, Add only W8A16: conv2 and add share r1, no kernel fits both
    path = tmp_path / "split.yaml"
    path.write_text(
        "kernels: [W8A16, W8A8, W4A8]\n"
        "ops:\n  quantized: [Conv, Add]\n  passthrough: [Relu]\n"
        "op_kernels:\n  Conv: [W8A8, W4A8]\n  Add: [W8A16]\n"
    )
    graph = builders.canonical(builders.residual_add()).graph
    analysis = quantizer_groups(graph, hw_profile.load_profile(path))
    assert analysis.groups == (QuantizerGroup("conv1", ("w1",), ("x",), ("conv1",), (W8A8, W4A8)),)
    reason = "no kernel of the profile fits every op of its group"
    assert analysis.skipped == (SkippedOp("conv2", "Conv", reason), SkippedOp("add", "Add", reason))
    assert dict(analysis.anchors) == {"x": "x"}


def _op_inputs(graph, name: str) -> tuple[list[str], list[str]]:
    """(constant, non-constant) float data inputs of a quantized op."""
    node = graph.nodes[name]
    data = (
        node.input[:2]
        if node.op_type in {"Conv", "ConvTranspose", "Gemm", "MatMul"}
        else node.input
    )
    floats = [t for t in data if t and graph.is_float(t)]
    return [t for t in floats if graph.is_constant(t)], [
        t for t in floats if not graph.is_constant(t)
    ]


@pytest.mark.parametrize("profile", hw_profile.builtin_names())
@pytest.mark.parametrize("name", list(builders.BUILDERS))
def test_group_invariants(name, profile):
    graph = builders.canonical(builders.BUILDERS[name]()).graph
    loaded = hw_profile.load_profile(profile)
    analysis = quantizer_groups(graph, loaded)
    fused = fused_ops(graph, loaded, lambda node: any(node.name in g.ops for g in analysis.groups))
    ops = Counter(op for g in analysis.groups for op in g.ops)
    tensors = Counter(t for g in analysis.groups for t in (*g.weights, *g.activations))
    assert all(count == 1 for count in ops.values())
    assert all(count == 1 for count in tensors.values())
    assert not set(ops) & {s.node for s in analysis.skipped}
    for group in analysis.groups:
        assert len(group.candidates) >= 1
        costs = [c.cost() for c in group.candidates]
        assert costs == sorted(costs, reverse=True)
        assert group.id == group.ops[0]
        assert list(group.ops) == sorted(group.ops, key=graph.index)
        for op in group.ops:
            weights, activations = _op_inputs(graph, op)
            if op in fused.joins or graph.op_type(op) not in WEIGHT_OPS:
                weights = []  # a bias, scale or LayerNorm constant is no weight of the group
            activations = [t for t in activations if t not in fused.internal | fused.masks]
            assert set(weights) <= set(group.weights)
            assert {analysis.anchors[t] for t in activations} <= set(group.activations)


def _efficientnet(shared_dir) -> builders.Canonical:
    return builders.canonical(onnx.load(str(shared_dir / "models" / "efficientnet_lite0.onnx")))


@pytest.mark.shared
def test_efficientnet_lite0_groups(shared_dir):
    canon = _efficientnet(shared_dir)
    graph = canon.graph
    profile = hw_profile.load_profile("npu")
    analysis = quantizer_groups(graph, profile)
    grouped = {t for g in analysis.groups for t in (*g.weights, *g.activations)}
    clip_bounds = {t for n in graph.nodes.values() if n.op_type == "Clip" for t in n.input[1:] if t}
    assert clip_bounds
    assert not clip_bounds & grouped
    # the classifier Gemm reads the GlobalAveragePool output through the Reshape
    gap = next(n for n in graph.nodes.values() if n.op_type == "GlobalAveragePool")
    gemm = next(n for n in graph.nodes.values() if n.op_type == "Gemm")
    assert graph.producer(gemm.input[0]).op_type == "Reshape"
    assert analysis.anchors[gemm.input[0]] == gap.output[0]
    assert next(g for g in analysis.groups if gemm.name in g.ops).activations == (gap.output[0],)
    convs = {n.name for n in graph.nodes.values() if n.op_type == "Conv"}
    assert convs <= {op for g in analysis.groups for op in g.ops}
    # the batch-size arithmetic of the Reshape stays float
    assert [(s.op_type, s.reason) for s in analysis.skipped] == [
        ("Shape", "op type Shape runs in float on profile npu"),
        ("Gather", "op type Gather runs in float on profile npu"),
        ("Concat", "no float inputs to quantize"),
    ]
    again = quantizer_groups(_efficientnet(shared_dir).graph, profile)
    assert [g.id for g in again.groups] == [g.id for g in analysis.groups]
    assert again == analysis


MASK_OP = "computes an attention mask from integer model inputs only: never quantized"


def test_attention_block_groups_on_npu():
    # Canonical order (graphsurgeon's toposort): mask_unsqueeze, q_mm, k_mm, v_mm, mask_cast,
    # q_add, k_add, v_add, mask_sub, k_t, mask_mul, qk, scale, mask_add, softmax, pv, o_mm,
    # o_add, residual, ln, ff_mm, ff_add, gelu/Gelu (the five GELU ops fused), out_mm, out_add.
    analysis = _analyse(builders.attention_block())
    assert analysis.groups == (
        # x feeds Q, K and V: one kernel input; the residual Add reads x and o, so o joins too.
        # Each bias Add runs inside its MatMul's kernel: no quantizer on q_0, k_0, v_0, o_0.
        QuantizerGroup(
            "q_mm", ("w_q", "w_k", "w_v"), ("x", "o"),
            ("q_mm", "k_mm", "v_mm", "q_add", "k_add", "v_add", "residual"), NPU_W,
        ),
        # activation x activation: both operands' quantizers (k read through the Transpose);
        # the scaling Div is the kernel's requantization
        QuantizerGroup("qk", (), ("q", "k"), ("qk", "scale"), NPU_A),
        QuantizerGroup("pv", (), ("v", "p"), ("pv",), NPU_A),
        QuantizerGroup("o_mm", ("w_o",), ("a",), ("o_mm", "o_add"), NPU_W),
        QuantizerGroup("ff_mm", ("w_f",), ("h",), ("ff_mm", "ff_add"), NPU_W),
        QuantizerGroup("out_mm", ("w_2",), ("g",), ("out_mm", "out_add"), NPU_W),
    )
    assert analysis.skipped == (
        SkippedOp("mask_cast", "Cast", MASK_OP),
        SkippedOp("mask_sub", "Sub", MASK_OP),
        SkippedOp("mask_mul", "Mul", MASK_OP),
        SkippedOp("mask_add", "Add", "adds the attention mask 'mask_bias' (from model inputs only): runs in float"),
        SkippedOp("softmax", "Softmax", "op type Softmax runs in float on profile npu"),
        SkippedOp("ln", "LayerNormalization", "op type LayerNormalization runs in float on profile npu"),
        SkippedOp("gelu/Gelu", "Gelu", "op type Gelu runs in float on profile npu"),
    )
    # no quantizer on the mask, the scores it is added to, or inside a MatMul + bias kernel
    assert dict(analysis.anchors) == {
        "a": "a", "g": "g", "h": "h", "kt": "k", "o": "o", "p": "p", "q": "q", "v": "v", "x": "x",
    }


def test_attention_block_groups_on_npu_transformer():
    # LayerNormalization, Softmax and Gelu have A16 kernels: each becomes a group of its own
    # input at A16; the mask Add runs inside the Softmax kernel (masked softmax), reading the
    # scaled scores s1 (quantized) and the mask (never quantized)
    analysis = _analyse(builders.attention_block(), "npu-transformer")
    a16 = (Candidate(None, 16),)
    assert analysis.groups == (
        QuantizerGroup(
            "q_mm", ("w_q", "w_k", "w_v"), ("x", "o"),
            ("q_mm", "k_mm", "v_mm", "q_add", "k_add", "v_add", "residual"), NPU_W,
        ),
        QuantizerGroup("qk", (), ("q", "k"), ("qk", "scale"), NPU_A),
        QuantizerGroup("mask_add", (), ("s1",), ("mask_add", "softmax"), a16),
        QuantizerGroup("pv", (), ("v", "p"), ("pv",), NPU_A),
        QuantizerGroup("o_mm", ("w_o",), ("a",), ("o_mm", "o_add"), NPU_W),
        QuantizerGroup("ln", (), ("r",), ("ln",), a16),
        QuantizerGroup("ff_mm", ("w_f",), ("h",), ("ff_mm", "ff_add"), NPU_W),
        QuantizerGroup("gelu/Gelu", (), ("f",), ("gelu/Gelu",), a16),
        QuantizerGroup("out_mm", ("w_2",), ("g",), ("out_mm", "out_add"), NPU_W),
    )
    assert analysis.skipped == (
        SkippedOp("mask_cast", "Cast", MASK_OP),
        SkippedOp("mask_sub", "Sub", MASK_OP),
        SkippedOp("mask_mul", "Mul", MASK_OP),
    )


def test_a_float_input_scaled_by_a_constant_is_no_mask():
    # masks come from integer inputs only: x * c of a float input is a real activation
    analysis = _analyse(builders.attention_block())
    assert "x" in analysis.group("q_mm").activations
