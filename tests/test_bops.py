"""bops: MACs per op from shapes (by hand) and BOPs of plans relative to W8A16."""

from __future__ import annotations

import onnx
import pytest

from onnxmp import bops, hw_profile
from onnxmp.passes import CANONICALIZE
from onnxmp.passes.quantizer_groups import quantizer_groups
from onnxmp.records import Candidate, Plan
from tests import builders, oracles

W8A16, W8A8, W4A8, A8 = Candidate(8, 16), Candidate(8, 8), Candidate(4, 8), Candidate(None, 8)


def _macs(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> dict[str, int]:
    return bops.macs_per_op(bops.concrete_graph(builders.canonical(model).model, shapes))


@pytest.mark.parametrize(
    ("stride", "pad", "dilation", "group", "out_size", "macs"),
    [
        # x[1,4,10,10], w[6, 4/group, 3, 3]; out = floor((10 + 2p - d*2 - 1) / s) + 1
        # MACs = 6 * out^2 (output elements) * (4/group) * 3 * 3
        (1, 0, 1, 1, 8, 6 * 8 * 8 * 36),  # 13824
        (2, 1, 1, 1, 5, 6 * 5 * 5 * 36),  # 5400
        (1, 2, 2, 1, 10, 6 * 10 * 10 * 36),  # 21600
        (2, 1, 2, 2, 4, 6 * 4 * 4 * 18),  # 1728
        (1, 1, 1, 2, 10, 6 * 10 * 10 * 18),  # 10800
    ],
)
def test_conv_macs_from_shapes(stride, pad, dilation, group, out_size, macs):
    assert oracles.conv_output_size(10, 3, stride=stride, pad=pad, dilation=dilation) == out_size
    model = builders.conv_geometry(stride=stride, pad=pad, dilation=dilation, group=group)
    assert _macs(model, {"x": (1, 4, 10, 10)}) == {"conv": macs}


def test_macs_come_from_the_feed_shapes_given():
    # callers give one sample's feed (calib_data.CalibrationSet.feed_shapes); a feed of 8
    # samples costs 8 x 13824 (the input is not forced to batch 1: its samples may sit on any axis)
    model = builders.conv_geometry(stride=1, pad=0, dilation=1, group=1)
    assert _macs(model, {"x": (1, 4, 10, 10)}) == {"conv": 13824}
    assert _macs(model, {"x": (8, 4, 10, 10)}) == {"conv": 8 * 13824}


def test_depthwise_and_pointwise_macs():
    # dw: out [1,4,6,6] = 144 elements x (1 x 3 x 3) = 1296; pw: [1,8,6,6] = 288 x 4 = 1152
    assert _macs(builders.depthwise(), {"x": (1, 4, 6, 6)}) == {"dw": 1296, "pw": 1152}


def test_gemm_macs():
    # conv: [1,2,4,4] = 32 x 27 = 864; fc: [1,32] x [32,5] = 5 x 32 = 160
    assert _macs(builders.flatten_gemm(), {"x": (1, 3, 4, 4)}) == {"conv": 864, "fc": 160}


@pytest.mark.parametrize("trans_b", [True, False])
def test_gemm_macs_either_weight_layout(trans_b):
    # [1,8] x [8,4]: 4 x 8 = 32, whether w is stored [4,8] (transB=1) or [8,4]
    assert _macs(builders.gemm_bn(trans_b=trans_b), {"x": (1, 8)}) == {"fc": 32}


def test_batched_matmul_macs():
    # x[1,2,3,5] @ w[2,5,7] -> [1,2,3,7] = 42 outputs x 5 = 210
    assert _macs(builders.batched_matmul(), {"x": (1, 2, 3, 5)}) == {"mm": 210}


def test_activation_matmul_macs():
    # mm_q, mm_k: [1,4,8] x [8,8] -> 32 x 8 = 256; mm_qk: [1,4,8] x [1,8,4] -> 16 x 8 = 128
    assert _macs(builders.matmul_act_act(), {"x": (1, 4, 8)}) == {
        "mm_q": 256,
        "mm_k": 256,
        "mm_qk": 128,
    }


def test_conv_transpose_macs():
    # x[1,4,5,5] = 100 input elements, each feeding C_out/group x k x k = 2 x 3 x 3 outputs
    assert _macs(builders.conv_transpose(), {"x": (1, 4, 5, 5)}) == {"up": 1800}


def test_symbolic_shapes_give_no_macs():
    # without concrete input shapes the batch dim stays "N": nothing is counted
    assert bops.macs_per_op(builders.canonical(builders.conv_relu()).graph) == {}


def test_concrete_graph_leaves_model_unchanged():
    model = builders.canonical(builders.conv_relu()).model
    before = model.SerializeToString()
    graph = bops.concrete_graph(model, {"x": (5, 3, 8, 8)})
    assert graph.shapes["y"] == (5, 4, 8, 8)
    assert model.SerializeToString() == before


def test_scalar_and_state_inputs_keep_their_shapes():
    # issue 9: a rank-0 input broke concrete_graph; a state [2, batch, 3] keeps its batch on axis 1
    from tests import hard_models

    model = builders.canonical(hard_models.stateful()).model
    graph = bops.concrete_graph(model, {"x": (1, 4), "state": (2, 1, 3), "rate": ()})
    assert graph.shapes["state_out"] == (2, 1, 3)
    # mm_in: [1,4] x [4,3] = 3 outputs x 4; mm_state: [1,3] x [3,3] = 3 outputs x 3
    assert bops.macs_per_op(graph) == {"mm_in": 12, "mm_state": 9}


def test_op_bits():
    graph = bops.concrete_graph(
        builders.canonical(builders.matmul_act_act()).model, {"x": (1, 4, 8)}
    )
    assert bops.op_bits(graph, "mm_q", W4A8) == 4 * 8
    assert bops.op_bits(graph, "mm_q", W8A16) == 8 * 16
    # activation x activation: a_bits squared
    assert bops.op_bits(graph, "mm_qk", A8) == 64
    assert bops.op_bits(graph, "mm_qk", Candidate(None, 16)) == 256
    assert bops.op_bits(graph, "mm_qk", W8A8) == 64


def _flatten_gemm_table():
    canon = builders.canonical(builders.flatten_gemm())
    graph = bops.concrete_graph(canon.model, {"x": (1, 3, 4, 4)})
    analysis = quantizer_groups(canon.graph, hw_profile.load_profile("npu"))
    macs = bops.macs_per_op(graph)
    return bops.group_bops(graph, analysis, macs), bops.reference_bops(graph, analysis, macs)


def test_group_bops_and_reference_by_hand():
    table, reference = _flatten_gemm_table()
    # conv 864 MACs, fc 160 MACs, times w_bits x a_bits
    assert table == {
        "conv": {W8A16: 864 * 128, W8A8: 864 * 64, W4A8: 864 * 32},
        "fc": {W8A16: 160 * 128, W8A8: 160 * 64, W4A8: 160 * 32},
    }
    assert reference == (864 + 160) * 128  # 131072


@pytest.mark.parametrize(("candidate", "expected"), [(W8A16, 1.0), (W8A8, 0.5), (W4A8, 0.25)])
def test_uniform_relative_bops(candidate, expected):
    table, reference = _flatten_gemm_table()
    plan = Plan({"conv": candidate, "fc": candidate})
    assert bops.relative_bops(plan, table, reference) == expected


def test_mixed_relative_bops_by_hand():
    table, reference = _flatten_gemm_table()
    # (864 x 64 + 160 x 32) / 131072 = 60416 / 131072
    plan = Plan({"conv": W8A8, "fc": W4A8})
    assert bops.relative_bops(plan, table, reference) == 60416 / 131072


def test_relative_bops_with_activation_matmul_by_hand():
    canon = builders.canonical(builders.matmul_act_act())
    graph = bops.concrete_graph(canon.model, {"x": (1, 4, 8)})
    analysis = quantizer_groups(canon.graph, hw_profile.load_profile("npu"))
    macs = bops.macs_per_op(graph)
    table = bops.group_bops(graph, analysis, macs)
    reference = bops.reference_bops(graph, analysis, macs)
    # reference: (256 + 256) x 8 x 16 + 128 x 16 x 16 = 65536 + 32768
    assert reference == 98304
    # W8A8 on the weight group, A8 on the act x act group: 512 x 64 + 128 x 64 = 40960
    plan = Plan({"mm_q": W8A8, "mm_qk": A8})
    assert bops.relative_bops(plan, table, reference) == 40960 / 98304


def test_relative_bops_of_a_model_without_macs():
    assert bops.relative_bops(Plan({}), {}, 0) == 0.0


@pytest.mark.shared
def test_efficientnet_lite0_macs(shared_dir):
    # Published: 0.385 GFLOPs (multiply-adds) and 4.652M params for EfficientNet-Lite0,
    # README of github.com/d-li14/efficientnet-lite.pytorch.
    model = onnx.load(str(shared_dir / "models" / "efficientnet_lite0.onnx"))
    for run in CANONICALIZE:
        model = run(model)
    macs = bops.macs_per_op(bops.concrete_graph(model, {"input": (1, 3, 224, 224)}))
    assert len(macs) == 50  # 49 Conv + 1 Gemm
    assert sum(macs.values()) == pytest.approx(385.2e6, rel=1e-3)


def test_dynamic_sequence_reaching_a_matmul_through_a_slice():
    # ids [8, 5]: seq_len = 5 -> position ids [1, 5] -> e [1, 5, 4] -> y [1, 5, 3]
    # MACs = 5 x 3 outputs x 4 = 60; shape inference alone leaves the Slice's end unknown
    model = builders.canonical(builders.position_slice_matmul()).model
    assert bops.macs_per_op(builders.canonical(builders.position_slice_matmul()).graph) == {}
    graph = bops.concrete_graph(model, {"ids": (8, 5)})
    assert graph.shapes["y"] == (1, 5, 3)
    assert bops.macs_per_op(graph) == {"mm": 60}


def test_attention_block_macs_at_sequence_12():
    # x [1,12,8]: q/k/v/o 12 x 8 x 8 = 768 each; qk 12 x 12 x 8 = 1152; pv 12 x 8 x 12 = 1152;
    # ff 12 x 16 x 8 = 1536; out 12 x 8 x 16 = 1536
    model = builders.canonical(builders.attention_block()).model
    macs = bops.macs_per_op(bops.concrete_graph(model, {"x": (1, 12, 8), "mask": (1, 12)}))
    assert macs == {
        "q_mm": 768, "k_mm": 768, "v_mm": 768, "qk": 1152, "pv": 1152, "o_mm": 768, "ff_mm": 1536, "out_mm": 1536,
    }


@pytest.mark.parametrize(
    ("mm", "table_bits", "expected"),
    [
        # int64 constants one_index 8 + zero_axes 8 + position_ids 16 x 8 + start 8 + slice_axes 8 = 160 bytes;
        # table [16,4] and w [4,3]: float32 = 256 + 48
        (None, None, 160 + 256 + 48),
        (W8A8, None, 160 + 256 + 12),  # w: 12 int8
        (W8A8, 8, 160 + 64 + 12),  # the table weight-only at int8: 64 bytes
        (W4A8, 4, 160 + 32 + 6),  # int4 packs two a byte
    ],
)
def test_weight_bytes_by_hand(mm, table_bits, expected):
    canon = builders.canonical(builders.position_slice_matmul())
    analysis = quantizer_groups(canon.graph, hw_profile.load_profile("npu-transformer"))
    assert analysis.tables == ("table",)
    plan = Plan({} if mm is None else {"mm": mm})
    assert bops.weight_bytes(canon.graph, analysis, plan, table_bits=table_bits) == expected
