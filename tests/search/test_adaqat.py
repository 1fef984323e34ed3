"""AdaQAT's descent on literal loss surfaces, and the strategy on literal phase-1 tables."""

from __future__ import annotations

import math

import numpy as np
import pytest

from onnxmp.records import Candidate, Plan, QuantizerGroup, SensitivityTable
from onnxmp.search import adaqat, greedy
from onnxmp.search.adaqat_descent import ETA_W, OSCILLATION_LIMIT, Axis, Problem, descend, variable
from onnxmp.search.select import select_by_bops
from onnxmp.search.space import SearchSpace, StrategyOptions

W8A16, W8A8, W6A8, W4A8 = Candidate(8, 16), Candidate(8, 8), Candidate(6, 8), Candidate(4, 8)
NPU = (W8A16, W8A8, W4A8)
RESEARCH = tuple(map(Candidate.parse, ("W8A16", "W8A8", "W6A8", "W8A6", "W6A6", "W4A8", "W6A4", "W4A6", "W4A4")))


def _group(group_id: str, candidates) -> QuantizerGroup:
    return QuantizerGroup(group_id, (f"{group_id}.w",), (f"{group_id}.x",), (group_id,), tuple(candidates))


def _bops(macs: int, candidates) -> dict[Candidate, int]:
    return {c: macs * (c.w_bits or 0) * c.a_bits for c in candidates}


# Two groups x, y with kernels W8A8, W6A8, W4A8 (only weight widths vary) and 10 MACs each:
# BOPs 640, 480, 320; reference 2 * 10 * 128 = 2560, so each kernel step saves 160/2560 = 0.0625.
# A literal loss surface L(w_x, w_y), not a sum of per-group terms:
SURFACE = {
    (8, 8): 0.010, (6, 8): 0.012, (4, 8): 0.100,
    (8, 6): 0.030, (6, 6): 0.034, (4, 6): 0.130,
    (8, 4): 0.200, (6, 4): 0.210, (4, 4): 0.300,
}
X, Y = _group("x", (W8A8, W6A8, W4A8)), _group("y", (W8A8, W6A8, W4A8))
BOPS = {"x": _bops(10, X.candidates), "y": _bops(10, Y.candidates)}


def _surface_delta(plan, lowered):
    after = {**plan, **lowered}
    return SURFACE[(plan["x"].w_bits, plan["y"].w_bits)] - SURFACE[(after["x"].w_bits, after["y"].w_bits)]


def _problem(lam: float, **kw) -> Problem:
    variables = (variable(Axis.WEIGHT, [X]), variable(Axis.WEIGHT, [Y]))
    return Problem(variables, BOPS, 2560, _surface_delta, lam, **kw)


def test_one_step_moves_each_width_against_its_finite_difference():
    # N_x = 6.5: ceil 7 rounds up to W8; one allowed width lower is W6. N_y = 5.5: W6, lower W4.
    # Now at L(8, 6) = 0.030.
    #   x: (L(8,6) - L(6,6)) / 0.0625 = -0.004 / 0.0625 = -0.064; + lambda 0.1 = 0.036  -> N_x falls
    #   y: (L(8,6) - L(8,4)) / 0.0625 = -0.17 / 0.0625 = -2.72;   + lambda 0.1 = -2.62  -> N_y rises
    result = descend(_problem(0.1, max_steps=1, start=(6.5, 5.5)))
    assert result.widths == pytest.approx((6.5 - ETA_W * 0.036, 5.5 + ETA_W * 2.62), abs=1e-12)
    assert result.steps == 1


def test_the_width_oscillating_at_its_balance_freezes_after_the_threshold():
    # lambda 0.1, from (8, 8): x at W8 pays 0.002 / 0.0625 = 0.032 < 0.1 per BOP to fall to W6, so
    # N_x falls; at W6 the next fall costs (0.100 - 0.012) / 0.0625 = 1.408 > 0.1, so it rises
    # again: N_x oscillates across 6 and freezes after 10 sign changes at the larger ceiling, 7
    # (kernel W8). y at W8 would pay 0.32 (and 0.352 once x is at W6): it never leaves the top.
    result = descend(_problem(0.1))
    assert result.flips[0] == OSCILLATION_LIMIT == 10
    assert result.frozen == (7, None)
    assert result.widths[1] == 8.0
    assert result.kernels == {"x": W8A8, "y": W8A8}


def test_a_large_lambda_takes_both_widths_to_the_bottom_without_oscillating():
    # lambda 10 exceeds every price on the surface (the largest is (0.300 - 0.130) / 0.0625 = 2.72)
    result = descend(_problem(10.0))
    assert result.kernels == {"x": W4A8, "y": W4A8}
    assert result.flips == (0, 0) and result.frozen == (None, None)


# Greedy's three-group table (tests/search/test_greedy.py): prices of its flips span 3e-5 to 6e-2
# noise per relative BOP, all different, so each lambda between two prices is one configuration.
GREEDY_GROUPS = (_group("a", NPU), _group("b", NPU), _group("c", NPU))
GREEDY_BOPS = {"a": _bops(10, NPU), "b": _bops(20, NPU), "c": _bops(5, NPU)}
GREEDY_TABLE = SensitivityTable({
    ("a", W8A16): 60.0, ("a", W8A8): 40.0, ("a", W4A8): 20.0,
    ("b", W8A16): 60.0, ("b", W8A8): 50.0, ("b", W4A8): 30.0,
    ("c", W8A16): math.inf, ("c", W8A8): 30.0, ("c", W4A8): 20.0,
})
GREEDY_SPACE = SearchSpace(GREEDY_GROUPS, GREEDY_BOPS, 4480, GREEDY_TABLE)


def test_with_the_additive_prediction_the_sweep_visits_greedys_curve_on_this_table():
    # per group, AdaQAT settles where the noise per BOP of the next step down exceeds lambda,
    # which on this table (each group's prices rise as it falls) is the order of greedy's flips
    assert [p.plan for p in adaqat.pareto_curve(GREEDY_SPACE, StrategyOptions())] == [
        p.plan for p in greedy.pareto_curve(GREEDY_TABLE, GREEDY_GROUPS, GREEDY_BOPS, 4480)
    ]


def test_lambda_bisection_lands_at_or_just_below_the_budget():
    # greedy's curve has 1920/4480 = 0.4286 and 1600/4480 = 0.3571 around 0.4
    curve = adaqat.pareto_curve(GREEDY_SPACE, StrategyOptions(target_bops=0.4))
    assert select_by_bops(curve, 0.4).point.bops_rel == pytest.approx(1600 / 4480)


def test_the_per_network_mode_gives_every_group_the_same_kernel():
    for lam in (1e-4, 1e-2, 1.0):
        plan = adaqat.configuration(GREEDY_SPACE, StrategyOptions(per_network=True), lam)
        assert len(set(plan.values())) == 1


def test_the_measured_loss_is_measured_once_per_configuration():
    calls: list[Plan] = []

    def measure(plan: Plan) -> float:
        calls.append(plan)
        return greedy.noise_ratio(greedy.predicted_sqnr_db(plan, GREEDY_TABLE))

    space = SearchSpace(GREEDY_GROUPS, GREEDY_BOPS, 4480, GREEDY_TABLE, measure=measure)
    measured = adaqat.pareto_curve(space, StrategyOptions(measured=True, lam=3e-3))
    predicted = adaqat.pareto_curve(space, StrategyOptions(lam=3e-3))
    assert [p.plan for p in measured] == [p.plan for p in predicted]  # same loss, same descent
    assert len(calls) == len(set(calls)) > 0


@pytest.mark.parametrize("seed", list(range(10)))
@pytest.mark.parametrize("per_network", [False, True])
def test_random_tables_give_kernels_of_the_profile_and_meet_the_budget(seed, per_network):
    rng = np.random.default_rng(seed)
    groups = tuple(_group(f"g{i}", RESEARCH if rng.random() < 0.5 else NPU) for i in range(4))
    table = {}
    for g in groups:
        for c in g.candidates:  # noise grows as bits fall, with random sensitivity
            table[(g.id, c)] = float(rng.uniform(5, 15)) * (c.w_bits + c.a_bits) / 8
    bops = {g.id: _bops(int(rng.integers(1, 50)), g.candidates) for g in groups}
    space = SearchSpace(groups, bops, sum(b[W8A16] for b in bops.values()), SensitivityTable(table))
    target = float(rng.uniform(0.2, 0.6))
    curve = adaqat.pareto_curve(space, StrategyOptions(target_bops=target, per_network=per_network))
    for point in curve:
        assert all(point.plan[g.id] in g.candidates for g in groups)
    assert [p.bops_rel for p in curve] == sorted((p.bops_rel for p in curve), reverse=True)
    cheapest = min(p.bops_rel for p in curve)
    if cheapest <= target:
        assert select_by_bops(curve, target).point.bops_rel <= target + 1e-12
