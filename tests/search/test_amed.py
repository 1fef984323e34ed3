"""AMED's Metropolis-Hastings: acceptance on a literal objective, determinism, the optimum found."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from onnxmp.records import Candidate, Plan, QuantizerGroup, SensitivityTable
from onnxmp.search.amed import AmedSettings, accept, amed_search, pick_measured

W8A16, W8A8, W4A8 = Candidate(8, 16), Candidate(8, 8), Candidate(4, 8)
CANDIDATES = (W8A16, W8A8, W4A8)
GROUPS = tuple(QuantizerGroup(g, (f"{g}.w",), (f"{g}.x",), (g,), CANDIDATES) for g in "abcd")
SQNR = {"a": (60, 40, 12), "b": (60, 30, 25), "c": (60, 45, 35), "d": (60, 20, 8)}
TABLE = SensitivityTable({(g, c): float(s) for g, row in SQNR.items() for c, s in zip(CANDIDATES, row, strict=True)})
MS = {W8A16: 4.0, W8A8: 2.0, W4A8: 1.5}
BOPS = {g: {c: 64 * c.w_bits * c.a_bits for c in CANDIDATES} for g in "abcd"}


def latency(plan: Plan) -> float:
    return sum(MS[c] for c in plan.values())


def test_better_candidate_is_always_accepted_without_a_draw():
    rng = np.random.default_rng(0)
    assert accept(0.5, 1.0, 0.1, rng) and accept(1.0, 1.0, 0.1, rng)
    assert rng.random() == np.random.default_rng(0).random()  # no number was drawn


def test_worse_candidate_is_accepted_with_probability_exp_minus_delta_over_t():
    # delta = 0.1 above the EMA at temperature 0.1: alpha = e^-1 = 0.3679. The first draws of
    # default_rng(0) are 0.637, 0.270, 0.041: reject, accept, accept.
    rng = np.random.default_rng(0)
    assert [accept(1.1, 1.0, 0.1, rng) for _ in range(3)] == [False, True, True]
    rng = np.random.default_rng(1)
    rate = sum(accept(1.1, 1.0, 0.1, rng) for _ in range(20000)) / 20000
    assert rate == pytest.approx(math.exp(-1), abs=0.01)


def _objective(plan: Plan, lam: float) -> float:
    noise = sum(10 ** (-TABLE.of(g, c) / 10) for g, c in plan.items())
    return math.log10(noise) + lam * latency(plan) / 16.0


@pytest.mark.parametrize(("budget", "optimum"), [
    (9.0, (W8A8, W4A8, W4A8, W8A16)),  # 2 + 1.5 + 1.5 + 4 = 9 ms
    (7.5, (W8A8, W8A8, W4A8, W8A8)),  # 2 + 2 + 1.5 + 2 = 7.5 ms
])
def test_chain_finds_the_brute_force_optimum_within_a_budget(budget, optimum):
    # The optimum is the lowest objective over the 81 plans within the budget (brute force);
    # the literal tuples above are what that brute force gives, written out.
    plans = [Plan(dict(zip("abcd", combo, strict=True))) for combo in itertools.product(CANDIDATES, repeat=4)]
    brute = min((p for p in plans if latency(p) <= budget), key=lambda p: _objective(p, 0.1))
    assert tuple(brute.values()) == optimum
    settings = AmedSettings(samples=600, seed=3, lam=0.1, move_probability=0.3, budget_ms=budget)
    result = amed_search(TABLE, GROUPS, BOPS, 64 * 16 * 4, latency, settings)
    assert result.best[0].plan == brute
    assert result.best[0].latency_ms == latency(brute)
    assert result.best[0].bops_rel == sum(BOPS[g][c] for g, c in brute.items()) / (64 * 16 * 4)
    assert 0 < result.acceptance_rate < 1


def test_budget_is_respected_by_every_returned_sample():
    settings = AmedSettings(samples=400, seed=0, lam=0.1, move_probability=0.3, budget_ms=8.0)
    result = amed_search(TABLE, GROUPS, BOPS, 64 * 16 * 4, latency, settings)
    assert result.best and all(p.latency_ms <= 8.0 for p in result.best)


def test_same_seed_same_chain_other_seed_other_chain():
    settings = AmedSettings(samples=300, seed=7, move_probability=0.3, budget_ms=9.0)
    first, second = amed_search(TABLE, GROUPS, BOPS, 64 * 16 * 4, latency, settings), amed_search(TABLE, GROUPS, BOPS, 64 * 16 * 4, latency, settings)
    assert (first.best, first.accepted_moves, first.proposed_moves) == (second.best, second.accepted_moves, second.proposed_moves)
    other = amed_search(TABLE, GROUPS, BOPS, 64 * 16 * 4, latency, AmedSettings(samples=300, seed=8, move_probability=0.3, budget_ms=9.0))
    assert (other.accepted_moves, other.proposed_moves) != (first.accepted_moves, first.proposed_moves)


def test_pick_measured_takes_the_best_measurement():
    result = amed_search(TABLE, GROUPS, BOPS, 64 * 16 * 4, latency, AmedSettings(samples=200, seed=0, move_probability=0.3, keep=3, budget_ms=9.0))
    scores = {p.plan: float(i) for i, p in enumerate(result.best)}  # the last is "measured" best
    best, measured = pick_measured(result.best, scores.__getitem__)
    assert best == result.best[-1] and measured == [0.0, 1.0, 2.0]
