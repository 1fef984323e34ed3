"""ort_borders: which tensors are borders, how many a plan crosses, the fit, and the stored model."""

from __future__ import annotations

import pytest

from onnxmp import bops, hw_profile
from onnxmp.calib_data import CalibrationSet
from onnxmp.float_candidate import FLOAT, FLOAT_ACTIVATION
from onnxmp.latency_spec import OrtSpec
from onnxmp.passes.calibrate import calibrate
from onnxmp.passes.quantizer_groups import quantizer_groups
from onnxmp.phase1 import ort_model
from onnxmp.phase1.ort_borders import (
    Border,
    BorderCost,
    KernelKind,
    borders_of,
    crossing,
    fit_border_cost,
    kind_of,
    neighbours,
    probe_plans,
)
from onnxmp.phase1.ort_latency import OrtLatency
from onnxmp.records import Candidate, Plan
from onnxmp.store import ResultStore
from tests import builders

W8A8, W8A16, W4A8, A8, A16 = Candidate(8, 8), Candidate(8, 16), Candidate(4, 8), Candidate(None, 8), Candidate(None, 16)


def _chain():
    canon = builders.canonical(builders.conv_chain3())
    analysis = quantizer_groups(canon.graph, hw_profile.load_profile("ort-cpu"))
    return canon, analysis


def test_kinds_follow_what_ort_cpu_fuses():
    assert [kind_of(c) for c in (W8A8, A8, Candidate(5, 8))] == [KernelKind.INTEGER] * 3
    assert [kind_of(c) for c in (W8A16, A16, W4A8, Candidate(8, 6), FLOAT, FLOAT_ACTIVATION)] == [KernelKind.FLOAT] * 6


def test_a_three_group_chain_has_two_borders_and_float_int_float_crosses_both():
    canon, analysis = _chain()
    assert [g.id for g in analysis.groups] == ["conv1", "conv2", "conv3"]
    graph = bops.concrete_graph(canon.model, {"x": (1, 2, 5, 5)})
    borders = borders_of(graph, analysis)
    # r1 (conv1's output after its fused Relu) is read by conv2, r2 by conv3: 2 x 5 x 5 elements each;
    # x comes from the graph input, so it is nobody's border.
    assert borders == (Border("r1", "conv1", "conv2", 50), Border("r2", "conv2", "conv3", 50))
    assert len(crossing(Plan({"conv1": FLOAT, "conv2": W8A8, "conv3": FLOAT}), borders)) == 2
    assert [b.tensor for b in crossing(Plan({"conv1": W8A8, "conv2": W8A8, "conv3": W8A16}), borders)] == ["r2"]
    assert crossing(Plan({"conv1": W8A16, "conv2": FLOAT, "conv3": W8A16}), borders) == []  # all float kinds
    assert neighbours(borders) == {"conv1": {"conv2"}, "conv2": {"conv1", "conv3"}, "conv3": {"conv2"}}


def test_estimate_adds_each_crossing_border_by_hand():
    borders = (Border("r1", "a", "b", 2_000_000), Border("r2", "b", "c", 0))
    times = {("a", FLOAT): 2.0, ("a", W8A8): 1.5, ("b", FLOAT): 3.0, ("b", W8A8): 2.0, ("c", FLOAT): 1.0, ("c", W8A8): 0.5}
    latency = OrtLatency(times, 10.0, borders, BorderCost(fixed_ms=0.1, per_melement_ms=0.05))
    # a int, b float, c int: additive 10 - 0.5 - 0.5 = 9; borders r1 0.1 + 2 x 0.05 = 0.2 and r2 0.1.
    plan = Plan({"a": W8A8, "b": FLOAT, "c": W8A8})
    assert latency.additive_ms(plan) == 9.0
    assert latency.border_ms(plan) == pytest.approx(0.3)
    assert latency.latency_ms(plan) == pytest.approx(9.3)
    assert latency.latency_ms(Plan({"a": W8A8, "b": W8A8, "c": W8A8})) == 8.0  # homogeneous: no border


def test_fit_drops_a_negative_coefficient():
    # An exact fit would be a + 5b = 0.1, 2a + b = 0.4: b = -0.0222 < 0, so b is dropped and the
    # line through (0, 0), (1, 0.1), (2, 0.4) is fitted: slope 0.2, intercept 1/6 - 0.2 = -1/30.
    cost = fit_border_cost([(0, 0, 0.0), (1, 5_000_000, 0.1), (2, 1_000_000, 0.4)])
    assert (cost.per_melement_ms, cost.fixed_ms, cost.offset_ms) == (0.0, pytest.approx(0.2), pytest.approx(-1 / 30))


def test_probe_plans_alternate_one_slice_at_a_time():
    _, analysis = _chain()
    probes = probe_plans(analysis.groups, ort_model.integer_candidate, lambda g: FLOAT, parts=1)
    assert [[c.a_bits for c in p.values()] for p in probes] == [[8, 8, 8], [32, 8, 32], [8, 32, 8]]


def test_ort_latency_model_is_measured_once_per_store(tmp_path, monkeypatch):
    canon, analysis = _chain()
    feeds = builders.feeds_for(canon.model, batch=4, seed=1)
    encodings = calibrate(canon.model, canon.graph, analysis, CalibrationSet(feeds), profile=hw_profile.load_profile("ort-cpu"))
    store = ResultStore(tmp_path / "phase1.jsonl", "k")
    spec = OrtSpec(threads=1, runs=3, warmups=1)
    first = ort_model.ort_latency_model(canon.model, analysis, encodings, spec, sample_shapes={"x": (1, 2, 5, 5)}, store=store)
    assert len(first.borders) == 2 and first.border_cost.fixed_ms >= 0 and first.border_cost.per_melement_ms >= 0
    assert {c for (_, c) in first.group_ms} == {FLOAT, W8A16, W8A8}

    def no_measuring(*args, **kwargs):
        raise AssertionError("measured again")

    monkeypatch.setattr(ort_model, "measure_groups", no_measuring)
    again = ort_model.ort_latency_model(canon.model, analysis, encodings, spec, sample_shapes={"x": (1, 2, 5, 5)}, store=store)
    assert again == first
    assert len(list(store.entries(ort_model.STORE_KIND))) == 1
