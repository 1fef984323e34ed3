"""ort_latency: which nodes a group's timed subgraph holds, and the additive estimate by hand."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest

from onnxmp import bops, hw_profile
from onnxmp.calib_data import CalibrationSet
from onnxmp.float_candidate import (
    FLOAT,
    FLOAT_ACTIVATION,
    quantized_part,
    table_with_float,
    with_float,
)
from onnxmp.latency_spec import OrtSpec
from onnxmp.passes.calibrate import calibrate
from onnxmp.passes.insert_qdq import insert_qdq
from onnxmp.passes.quantizer_groups import quantizer_groups
from onnxmp.phase1.ort_latency import (
    OrtLatency,
    group_subgraph,
    group_times,
    in_context,
    measure_groups,
    median_ms,
    random_feeds,
)
from onnxmp.records import Candidate, Plan, SensitivityTable
from tests import builders

W8A8, A8 = Candidate(8, 8), Candidate(None, 8)


def _w8a8_residual():
    canon = builders.canonical(builders.residual_add())
    profile = hw_profile.load_profile("npu")
    analysis = quantizer_groups(canon.graph, profile)
    feeds = builders.feeds_for(canon.model, batch=4, seed=1)
    encodings = calibrate(canon.model, canon.graph, analysis, CalibrationSet(feeds), profile=profile)
    plan = Plan({g.id: W8A8 if g.weights else A8 for g in analysis.groups})
    return canon, analysis, insert_qdq(canon.model, analysis=analysis, plan=plan, encodings=encodings)


def test_group_subgraph_holds_input_dq_ops_fused_relu_and_output_q():
    canon, analysis, qdq = _w8a8_residual()
    graph = bops.concrete_graph(qdq, {"x": (1, 4, 6, 6)})
    part = group_subgraph(qdq, graph, analysis.group("conv1"))
    onnx.checker.check_model(part)
    # conv1 reads x through a Q/DQ pair and w1 through a DQ; its Relu is fused; r1 is
    # quantized by conv2's group: the subgraph runs int8 x to int8 r1.
    assert sorted(n.op_type for n in part.graph.node) == [
        "Conv", "DequantizeLinear", "DequantizeLinear", "QuantizeLinear", "Relu",
    ]
    assert [i.type.tensor_type.elem_type for i in part.graph.input] == [onnx.TensorProto.UINT8]
    assert [o.type.tensor_type.elem_type for o in part.graph.output] == [onnx.TensorProto.UINT8]


def test_group_times_run_every_group():
    canon, analysis, qdq = _w8a8_residual()
    spec = OrtSpec(threads=1, runs=3, warmups=1)
    times = group_times(qdq, {"x": (1, 4, 6, 6)}, analysis.groups, spec)
    assert set(times) == {"conv1", "conv2"} and all(t > 0 for t in times.values())
    feeds = random_feeds(canon.model, np.random.default_rng(0), batch=2)
    assert feeds["x"].shape == (2, 4, 6, 6) and median_ms(canon.model, feeds, spec) > 0


def test_additive_estimate_by_hand():
    # float model 10 ms; group a: float 2 ms, W8A8 1.5 ms; group b: float 3 ms, W8A8 2 ms.
    times = OrtLatency({("a", FLOAT): 2.0, ("a", W8A8): 1.5, ("b", FLOAT): 3.0, ("b", W8A8): 2.0}, 10.0)
    assert times.latency_ms(Plan({"a": W8A8, "b": W8A8})) == 10.0 - 0.5 - 1.0
    assert times.latency_ms(Plan({"a": FLOAT, "b": W8A8})) == 9.0


def test_float_candidate_helpers():
    _, analysis, _ = _w8a8_residual()
    widened = with_float(analysis)
    assert [g.candidates[0] for g in widened.groups] == [FLOAT, FLOAT]
    table = table_with_float(SensitivityTable({("conv1", W8A8): 30.0}), analysis)
    assert table.of("conv1", FLOAT) == math.inf and table.of("conv1", W8A8) == 30.0
    assert quantized_part(Plan({"conv1": FLOAT, "conv2": W8A8, "add": FLOAT_ACTIVATION})) == Plan({"conv2": W8A8})


def test_in_context_shares_by_hand():
    canon, analysis, _ = _w8a8_residual()
    # ORT names a fused node after the node it replaced (or, for NCHWc convolutions, after
    # its output tensor: r1 is relu1's output, fused into conv1); layout nodes are nobody's.
    profile = {"conv1_token_3": 1.0, "x_QuantizeLinear": 0.5, "Transpose": 2.0, "conv2": 0.7,
               "add_token_9": 0.2, "w2_DequantizeLinear": 0.1, "r1_nchwc": 0.3, "ReorderOutput": 0.4,
               "r1_DequantizeLinear/duplicated": 0.05}
    assert in_context(profile, analysis, canon.graph) == pytest.approx({"conv1": 1.8, "conv2": 1.05})


def test_measure_groups_in_context_covers_every_candidate():
    canon, analysis, _ = _w8a8_residual()
    spec = OrtSpec(threads=1, runs=3, warmups=1)
    encodings = calibrate(canon.model, canon.graph, analysis, CalibrationSet(builders.feeds_for(canon.model, batch=4, seed=1)),
                          profile=hw_profile.load_profile("npu"))
    measured = measure_groups(canon.model, analysis, encodings, spec, sample_shapes={"x": (1, 4, 6, 6)})
    kinds = {c for (_, c) in measured.group_ms}
    assert kinds == {FLOAT, Candidate(8, 16), W8A8, Candidate(4, 8)}
    assert sum(measured.group_ms.values()) > 0 and measured.float_model_ms > 0
