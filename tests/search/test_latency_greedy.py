"""The greedy walk priced in milliseconds, on a literal table and a literal latency function."""

from __future__ import annotations

import math

import pytest

from onnxmp.errors import BudgetError
from onnxmp.float_candidate import FLOAT
from onnxmp.phase1.ort_borders import Border, BorderCost
from onnxmp.phase1.ort_latency import OrtLatency
from onnxmp.records import Candidate, Plan, QuantizerGroup, SensitivityTable
from onnxmp.search.latency_greedy import latency_curve, with_latency
from onnxmp.search.select import select_by_latency

W8A8, W4A8 = Candidate(8, 8), Candidate(4, 8)
GROUPS = tuple(QuantizerGroup(g, (f"{g}.w",), (f"{g}.x",), (g,), (W8A8, W4A8)) for g in "abc")
# SQNR: W8A8 exact everywhere; W4A8 a 20 dB (noise 1e-2), b 10 dB (1e-1), c 30 dB (1e-3).
TABLE = SensitivityTable({
    **{(g, W8A8): math.inf for g in "abc"},
    ("a", W4A8): 20.0, ("b", W4A8): 10.0, ("c", W4A8): 30.0,
})
BOPS = {g: {W8A8: 64, W4A8: 32} for g in "abc"}


def latency(plan: Plan) -> float:
    # a and b save 1 ms at W4A8; c is compute-bound (no saving) unless b is at W4A8, when c's
    # input is narrower and it saves 0.5 ms: the latency of c depends on its neighbour.
    ms = {"a": 2.0 if plan["a"] == W8A8 else 1.0, "b": 2.0 if plan["b"] == W8A8 else 1.0}
    ms["c"] = 1.0 if plan["c"] == W8A8 or plan["b"] == W8A8 else 0.5
    return sum(ms.values())


def test_latency_curve_by_hand():
    # start 5 ms. Moves: a saves 1 ms for 1e-2 (1e-2/ms), b 1 ms for 1e-1, c saves nothing -> a.
    # then b (1e-1/ms) is the only saving move -> b at 3 ms; now c saves 0.5 ms for 1e-3 -> c.
    curve = latency_curve(TABLE, GROUPS, BOPS, 192, latency)
    assert [dict(p.plan) for p in curve] == [
        {"a": W8A8, "b": W8A8, "c": W8A8},
        {"a": W4A8, "b": W8A8, "c": W8A8},
        {"a": W4A8, "b": W4A8, "c": W8A8},
        {"a": W4A8, "b": W4A8, "c": W4A8},
    ]
    assert [p.latency_ms for p in curve] == [5.0, 4.0, 3.0, 2.5]
    assert [p.bops_rel for p in curve] == [1.0, 160 / 192, 128 / 192, 0.5]
    assert curve[1].predicted_sqnr_db == pytest.approx(20.0)


def test_select_by_latency_and_annotation():
    curve = latency_curve(TABLE, GROUPS, BOPS, 192, latency)
    assert select_by_latency(curve, 3.5).index == 2
    assert select_by_latency(curve, 4.0).index == 1
    with pytest.raises(BudgetError, match="below the fastest configuration"):
        select_by_latency(curve, 2.0)
    bare = tuple(p.__class__(p.bops_rel, p.predicted_sqnr_db, p.plan) for p in curve)
    assert [p.latency_ms for p in with_latency(bare, latency)] == [5.0, 4.0, 3.0, 2.5]


# A chain a -> b -> c on ONNX Runtime: float or W8A8 per group. W8A8 saves 0.3 ms in a and b and
# costs 0.2 ms more in c; each border between a float and an int8 group costs 0.35 ms.
CHAIN = tuple(QuantizerGroup(g, (f"{g}.w",), (f"{g}.x",), (g,), (FLOAT, W8A8)) for g in "abc")
CHAIN_TABLE = SensitivityTable({
    **{(g, FLOAT): math.inf for g in "abc"}, ("a", W8A8): 30.0, ("b", W8A8): 20.0, ("c", W8A8): 40.0,
})
CHAIN_TIMES = {("a", FLOAT): 1.0, ("a", W8A8): 0.7, ("b", FLOAT): 1.0, ("b", W8A8): 0.7, ("c", FLOAT): 1.0, ("c", W8A8): 1.2}
CHAIN_BORDERS = (Border("ab", "a", "b", 100), Border("bc", "b", "c", 100))
CHAIN_BOPS = {g: {FLOAT: 1024, W8A8: 64} for g in "abc"}


def test_flips_are_priced_with_their_borders_and_runs_cross_the_barrier():
    latency = OrtLatency(CHAIN_TIMES, 3.0, CHAIN_BORDERS, BorderCost(fixed_ms=0.35))
    # All float, 3.0 ms. Single flips: a -0.3 + 0.35 (border ab), b -0.3 + 0.7, c +0.2 + 0.35: none saves.
    # Runs to W8A8 that save time: [a, b] -0.6 + 0.35 (bc) = 2.75 ms for 1e-3 + 1e-2 noise (0.044
    # per ms) and [a, b, c] -0.4 = 2.6 ms for 0.0111 (0.028 per ms, cheaper per ms); [b, c] -0.1
    # + 0.35 saves nothing. The fewest groups win: [a, b]. Then c alone: +0.2 - 0.35 (bc is gone)
    # = 2.6 ms. From all W8A8 nothing saves time.
    curve = latency_curve(CHAIN_TABLE, CHAIN, CHAIN_BOPS, 192, latency.latency_ms)
    assert [[c.a_bits for c in p.plan.values()] for p in curve] == [[32, 32, 32], [8, 8, 32], [8, 8, 8]]
    assert [p.latency_ms for p in curve] == pytest.approx([3.0, 2.75, 2.6])
    # Without borders the walk is additive: a (1e-3 per 0.3 ms), then b; c never saves time.
    additive = latency_curve(CHAIN_TABLE, CHAIN, CHAIN_BOPS, 192, OrtLatency(CHAIN_TIMES, 3.0).latency_ms)
    assert [[c.a_bits for c in p.plan.values()] for p in additive] == [[32, 32, 32], [8, 32, 32], [8, 8, 32]]
    assert [p.latency_ms for p in additive] == pytest.approx([3.0, 2.7, 2.4])


def test_a_flip_is_priced_with_its_neighbours_current_kinds():
    latency = OrtLatency(CHAIN_TIMES, 3.0, CHAIN_BORDERS, BorderCost(fixed_ms=0.35))
    int_ab = Plan({"a": W8A8, "b": W8A8, "c": FLOAT})
    # b back to float: +0.3, border ab appears and bc disappears: 2.75 -> 3.05
    assert latency.latency_ms(int_ab.replace("b", FLOAT)) == pytest.approx(3.05)
    # b alone at W8A8 among float neighbours: -0.3 and two borders, 3.0 -> 3.4
    assert latency.latency_ms(Plan({"a": FLOAT, "b": W8A8, "c": FLOAT})) == pytest.approx(3.4)
