"""fused_ops: kernel epilogues, attention masks and masked softmax on the tiny attention block."""

from __future__ import annotations

from onnx import TensorProto, helper

from onnxmp import hw_profile
from onnxmp.passes.fused_ops import MASK_REASON, fused_ops, mask_tensors
from tests import builders

_MASK_ADD = "adds the attention mask 'mask_bias' (from model inputs only): runs in float"


def _fused(profile: str):
    graph = builders.canonical(builders.attention_block()).graph
    loaded = hw_profile.load_profile(profile)
    return fused_ops(graph, loaded, lambda node: node.op_type in loaded.quantized_ops)


def test_masks_are_the_float_tensors_computed_from_the_integer_mask_only():
    # m1 = Unsqueeze(mask) is int64 (no quantizer question); x, an input, is float: no mask
    graph = builders.canonical(builders.attention_block()).graph
    assert mask_tensors(graph) == {"m_float", "m_inverted", "mask_bias"}


def test_epilogues_and_float_mask_ops_on_npu():
    fused = _fused("npu")
    # each bias Add joins its MatMul, the 1/sqrt(d) Div joins QK^T
    assert dict(fused.joins) == {
        "q_add": "q_mm", "k_add": "k_mm", "v_add": "v_mm", "scale": "qk", "o_add": "o_mm", "ff_add": "ff_mm",
        "out_add": "out_mm",
    }
    assert fused.internal == {"q_0", "k_0", "v_0", "s0", "o_0", "ff_0", "out_0"}
    assert dict(fused.reasons) == {
        "mask_cast": MASK_REASON, "mask_sub": MASK_REASON, "mask_mul": MASK_REASON, "mask_add": _MASK_ADD,
    }


def test_mask_add_joins_a_quantized_softmax():
    fused = _fused("npu-transformer")
    assert fused.joins["mask_add"] == "softmax"
    assert "s2" in fused.internal  # scores + mask: inside the masked-softmax kernel
    assert "mask_add" not in fused.reasons


def test_a_bias_read_twice_is_no_epilogue():
    # q_0 also leaves the graph: the MatMul's result exists outside the kernel, so q_add is its own op
    model = builders.attention_block()
    model.graph.output.append(helper.make_tensor_value_info("q_0", TensorProto.FLOAT, None))
    graph = builders.canonical(model).graph
    loaded = hw_profile.load_profile("npu")
    fused = fused_ops(graph, loaded, lambda node: node.op_type in loaded.quantized_ops)
    assert "q_add" not in fused.joins and "q_0" not in fused.internal

