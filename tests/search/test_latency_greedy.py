"""The greedy walk priced in milliseconds, on a literal table and a literal latency function."""

from __future__ import annotations

import math

import pytest

from onnxmp.errors import BudgetError
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
