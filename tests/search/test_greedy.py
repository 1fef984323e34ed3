"""Phase 2 as a pure function of a literal sensitivity table: no ONNX, no ONNX Runtime."""

from __future__ import annotations

import math

import pytest

from onnxmp.records import Candidate, Plan, QuantizerGroup, SensitivityTable, Strategy
from onnxmp.search import STRATEGIES, SearchSpace, StrategyOptions
from onnxmp.search.greedy import pareto_curve, predicted_sqnr_db

W8A16, W8A8, W6A8, W8A6, W6A6, W4A8 = (
    Candidate(8, 16), Candidate(8, 8), Candidate(6, 8), Candidate(8, 6), Candidate(6, 6), Candidate(4, 8),
)
A16, A8 = Candidate(None, 16), Candidate(None, 8)
INF = math.inf


def _group(group_id: str, *candidates: Candidate) -> QuantizerGroup:
    return QuantizerGroup(group_id, (f"{group_id}.w",), (f"{group_id}.x",), (group_id,), candidates)


def _bops(macs: int, *candidates: Candidate) -> dict[Candidate, int]:
    return {c: macs * (c.w_bits or 0) * c.a_bits for c in candidates}


# Three groups, MACs a=10, b=20, c=5; BOPs = MACs * w_bits * a_bits:
#   a: W8A16 1280, W8A8 640, W4A8 320      SQNR 60, 40, 20 dB -> noise ratio 1e-6, 1e-4, 1e-2
#   b: W8A16 2560, W8A8 1280, W4A8 640     SQNR 60, 50, 30 dB -> 1e-6, 1e-5, 1e-3
#   c: W8A16  640, W8A8 320, W4A8 160      SQNR inf, 30, 20 dB -> 0, 1e-3, 1e-2
# reference (W8A16 everywhere) = 4480.
#
# Cost of a move = added noise ratio / BOPs saved:
#   start           a->W8A8 9.9e-5/640 = 1.55e-7   b->W8A8 9e-6/1280 = 7.0e-9   c->W8A8 1e-3/320 = 3.1e-6   => b
#   b at W8A8       a->W8A8 1.55e-7                b->W4A8 9.9e-4/640 = 1.5e-6  c->W8A8 3.1e-6             => a
#   a at W8A8       a->W4A8 9.9e-3/320 = 3.1e-5    b->W4A8 1.5e-6               c->W8A8 3.1e-6             => b
#   b at W4A8       a->W4A8 3.1e-5                 (b done)                     c->W8A8 3.1e-6             => c
#   c at W8A8       a->W4A8 3.1e-5                                              c->W4A8 9e-3/160 = 5.6e-5  => a
#   a at W4A8       (a done)                                                    c->W4A8                    => c
# Flip order: b, a, b, c, a, c; BOPs 4480, 3200, 2560, 1920, 1600, 1280, 1120.
GROUPS = (_group("a", W8A16, W8A8, W4A8), _group("b", W8A16, W8A8, W4A8), _group("c", W8A16, W8A8, W4A8))
BOPS = {
    "a": _bops(10, W8A16, W8A8, W4A8),
    "b": _bops(20, W8A16, W8A8, W4A8),
    "c": _bops(5, W8A16, W8A8, W4A8),
}
REFERENCE = 4480
TABLE = SensitivityTable({
    ("a", W8A16): 60.0, ("a", W8A8): 40.0, ("a", W4A8): 20.0,
    ("b", W8A16): 60.0, ("b", W8A8): 50.0, ("b", W4A8): 30.0,
    ("c", W8A16): INF, ("c", W8A8): 30.0, ("c", W4A8): 20.0,
})


def _plan(a: Candidate, b: Candidate, c: Candidate) -> Plan:
    return Plan({"a": a, "b": b, "c": c})


EXPECTED_PLANS = [
    _plan(W8A16, W8A16, W8A16),
    _plan(W8A16, W8A8, W8A16),
    _plan(W8A8, W8A8, W8A16),
    _plan(W8A8, W4A8, W8A16),
    _plan(W8A8, W4A8, W8A8),
    _plan(W4A8, W4A8, W8A8),
    _plan(W4A8, W4A8, W4A8),
]


def test_flip_order_is_the_one_worked_out_by_hand():
    assert BOPS == {  # the premise of the comment above
        "a": {W8A16: 1280, W8A8: 640, W4A8: 320},
        "b": {W8A16: 2560, W8A8: 1280, W4A8: 640},
        "c": {W8A16: 640, W8A8: 320, W4A8: 160},
    }
    curve = pareto_curve(TABLE, GROUPS, BOPS, REFERENCE)
    assert [p.plan for p in curve] == EXPECTED_PLANS


def test_bops_along_the_curve_are_exact_and_strictly_decrease():
    curve = pareto_curve(TABLE, GROUPS, BOPS, REFERENCE)
    assert [p.bops_rel for p in curve] == pytest.approx([b / 4480 for b in (4480, 3200, 2560, 1920, 1600, 1280, 1120)], abs=1e-12)
    assert all(later.bops_rel < earlier.bops_rel for earlier, later in zip(curve, curve[1:], strict=False))
    assert curve[0].bops_rel == 1.0


def test_predicted_sqnr_adds_noise_ratios():
    curve = pareto_curve(TABLE, GROUPS, BOPS, REFERENCE)
    # by hand from the noise ratios in the comment above
    expected_ratios = [
        1e-6 + 1e-6 + 0,
        1e-6 + 1e-5 + 0,
        1e-4 + 1e-5 + 0,
        1e-4 + 1e-3 + 0,
        1e-4 + 1e-3 + 1e-3,
        1e-2 + 1e-3 + 1e-3,
        1e-2 + 1e-3 + 1e-2,
    ]
    assert [p.predicted_sqnr_db for p in curve] == pytest.approx(
        [-10 * math.log10(r) for r in expected_ratios], abs=1e-9
    )
    assert curve[0].predicted_sqnr_db == pytest.approx(56.98970004336019, abs=1e-9)  # -10 log10(2e-6)
    assert predicted_sqnr_db(_plan(W4A8, W4A8, W4A8), TABLE) == pytest.approx(-10 * math.log10(0.021), abs=1e-9)


def test_greedy_is_the_registered_strategy():
    space = SearchSpace(GROUPS, BOPS, REFERENCE, TABLE)
    assert STRATEGIES[Strategy.GREEDY](space, StrategyOptions()) == pareto_curve(TABLE, GROUPS, BOPS, REFERENCE)


def test_a_weightless_group_is_never_moved():
    # "add" costs nothing at A16 and at A8, and A8 adds no noise: moving it would save 0 BOPs
    groups = (*GROUPS[:2], QuantizerGroup("add", (), ("add.x", "add.y"), ("add",), (A16, A8)), GROUPS[2])
    bops = {**BOPS, "add": {A16: 0, A8: 0}}
    table = SensitivityTable({**TABLE.sqnr_db, ("add", A16): 70.0, ("add", A8): INF})
    curve = pareto_curve(table, groups, bops, REFERENCE)
    assert [p.plan for p in curve] == [
        Plan({"a": p["a"], "b": p["b"], "add": A16, "c": p["c"]}) for p in EXPECTED_PLANS
    ]
    # and its A16 noise (1e-7) is part of every prediction
    assert curve[0].predicted_sqnr_db == pytest.approx(-10 * math.log10(2e-6 + 1e-7), abs=1e-9)


@pytest.mark.parametrize(
    ("sqnr_w6a8", "sqnr_w8a6", "chosen"),
    [(30.0, 35.0, W8A6), (35.0, 30.0, W6A8)],
)
def test_equal_bops_levels_pick_the_lower_noise_candidate(sqnr_w6a8, sqnr_w8a6, chosen):
    # BOPs per MAC: W8A8 64, W6A8 = W8A6 = 48, W6A6 36: one level at 48 with two candidates
    group = _group("g", W8A8, W6A8, W8A6, W6A6)
    bops = {"g": _bops(1, W8A8, W6A8, W8A6, W6A6)}
    table = SensitivityTable({("g", W8A8): 40.0, ("g", W6A8): sqnr_w6a8, ("g", W8A6): sqnr_w8a6, ("g", W6A6): 25.0})
    curve = pareto_curve(table, (group,), bops, 64)
    assert [p.plan["g"] for p in curve] == [W8A8, chosen, W6A6]
    assert [p.bops_rel for p in curve] == [1.0, 0.75, 36 / 64]


def test_plus_inf_entries_cost_nothing_and_move_first():
    # z is exact at every width (inf dB): its moves add no noise, so it goes down first
    groups = (_group("y", W8A16, W8A8, W4A8), _group("z", W8A16, W8A8, W4A8))
    bops = {"y": _bops(1, W8A16, W8A8, W4A8), "z": _bops(1, W8A16, W8A8, W4A8)}
    table = SensitivityTable({
        ("y", W8A16): 50.0, ("y", W8A8): 40.0, ("y", W4A8): 30.0,
        ("z", W8A16): INF, ("z", W8A8): INF, ("z", W4A8): INF,
    })
    curve = pareto_curve(table, groups, bops, 256)
    assert [(p.plan["y"], p.plan["z"]) for p in curve] == [
        (W8A16, W8A16), (W8A16, W8A8), (W8A16, W4A8), (W8A8, W4A8), (W4A8, W4A8)
    ]
    assert [p.predicted_sqnr_db for p in curve] == pytest.approx([50.0, 50.0, 50.0, 40.0, 30.0], abs=1e-9)


def test_all_inf_table_predicts_inf_everywhere():
    table = SensitivityTable({(g.id, c): INF for g in GROUPS for c in g.candidates})
    curve = pareto_curve(table, GROUPS, BOPS, REFERENCE)
    assert len(curve) == 7
    assert curve[-1].plan == _plan(W4A8, W4A8, W4A8)
    assert all(p.predicted_sqnr_db == INF for p in curve)


def test_ties_in_cost_go_to_the_group_first_in_the_network():
    # a and b are identical: every move costs the same for both, so a always goes first
    groups = (_group("a", W8A16, W8A8, W4A8), _group("b", W8A16, W8A8, W4A8))
    bops = {"a": _bops(1, W8A16, W8A8, W4A8), "b": _bops(1, W8A16, W8A8, W4A8)}
    table = SensitivityTable({(g, c): s for g in "ab" for c, s in ((W8A16, 50.0), (W8A8, 40.0), (W4A8, 30.0))})
    curve = pareto_curve(table, groups, bops, 256)
    assert [(p.plan["a"], p.plan["b"]) for p in curve] == [
        (W8A16, W8A16), (W8A8, W8A16), (W8A8, W8A8), (W4A8, W8A8), (W4A8, W4A8)
    ]
