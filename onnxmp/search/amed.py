"""AMED's search in post-training form: random-walk Metropolis-Hastings over bit allocations.

Why: latency on an accelerator is not additive over layers (a layer's memory time depends
on the widths its neighbours choose), so a greedy walk priced one move at a time can miss
allocations a sampler finds. AMED (Kimhi et al. 2024, §4.2-4.5, Algorithm 1) samples the
bit-allocation vector as a multivariate Markov chain with Metropolis-Hastings. Here the
quality term comes from the phase-1 table instead of QAT between samples (see README).

Rule cases (one sample t, state b_t, EMA of the objective J_bar):
1. Objective J(b) = log10(predicted noise-to-signal ratio of b) + lambda * L(b) / L_ref,
   the log-scaled quality loss plus the weighted latency (eqs. 1, 8); L_ref is the
   latency of the start state. With a latency budget, the paper's hard-constraint mask
   becomes a penalty MASK_PENALTY * max(0, L - budget) / L_ref, so a chain that starts
   over budget is driven into it.
2. Proposal (random walk, symmetric): each group moves one step up or down its candidate
   list with probability `move_probability` (at least one group moves); a step off the
   list is no move.
3. Layerwise acceptance ratio: for each moved group l, J_l = J(b_t with only l moved) and
   alpha_l = exp(-(J_l - J_bar) / temperature). alpha_l >= 1 is accepted; otherwise the
   move is accepted by a Bernoulli(alpha_l) draw. b_{t+1} takes every accepted move.
4. EMA (eq. 7): J_bar <- (1 - beta) * J_bar + beta * J(b_{t+1}); J_bar starts at J(b_0).
5. Every visited state is a sample; the `keep` best distinct samples within the budget
   (lowest J) are returned, best first, for measuring for real (`pick_measured`).
6. Determinism: one numpy Generator seeded with `seed` draws everything, in group order.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from onnxmp.errors import BudgetError
from onnxmp.records import (
    Candidate,
    ParetoCurve,
    ParetoPoint,
    Plan,
    QuantizerGroup,
    SensitivityTable,
    noise_ratio,
)
from onnxmp.search.space import SearchSpace, StrategyOptions

logger = logging.getLogger(__name__)
MASK_PENALTY = 1000.0
_NOISE_FLOOR = 1e-12  # a plan with zero predicted noise: log10 stays finite

Latency = Callable[[Plan], float]


@dataclass(frozen=True)
class AmedSettings:
    """The sampler's knobs; defaults as discussed in README ("AMED")."""

    samples: int = 2000
    seed: int = 0
    lam: float = 1.0  # lambda: weight of relative latency against log10 noise
    beta: float = 0.5  # EMA weight of the newest objective (eq. 7); README says why not 0.01
    temperature: float = 0.01
    move_probability: float = 0.04
    budget_ms: float | None = None
    keep: int = 5


@dataclass(frozen=True)
class AmedResult:
    """The best samples (best first), and how the chain went."""

    best: tuple[ParetoPoint, ...]
    samples: int
    proposed_moves: int
    accepted_moves: int
    seconds: float

    @property
    def acceptance_rate(self) -> float:
        return self.accepted_moves / self.proposed_moves if self.proposed_moves else 0.0


@dataclass(frozen=True)
class _Problem:
    table: SensitivityTable
    latency: Latency
    settings: AmedSettings
    reference_ms: float

    def objective(self, plan: Plan) -> float:
        ms = self.latency(plan)
        return self.objective_at(plan, ms)

    def objective_at(self, plan: Plan, ms: float) -> float:
        noise = sum(noise_ratio(self.table.of(g, c)) for g, c in plan.items())
        value = math.log10(max(noise, _NOISE_FLOOR)) + self.settings.lam * ms / self.reference_ms
        budget = self.settings.budget_ms
        if budget is not None and ms > budget:
            value += MASK_PENALTY * (ms - budget) / self.reference_ms
        return value


def accept(candidate: float, ema: float, temperature: float, rng: np.random.Generator) -> bool:
    """Rule 3 for one layer: always if not worse than the EMA, else with probability alpha.

    >>> accept(1.0, 2.0, 0.1, np.random.default_rng(0))
    True
    """
    alpha = math.exp(min(0.0, -(candidate - ema) / temperature))
    return alpha >= 1.0 or bool(rng.random() < alpha)


def amed_search(
    table: SensitivityTable,
    groups: Sequence[QuantizerGroup],
    bops: Mapping[str, Mapping[Candidate, int]],
    reference_bops: int,
    latency: Latency,
    settings: AmedSettings = AmedSettings(),
    *,
    start: Plan | None = None,
) -> AmedResult:
    """Run the chain for `settings.samples` samples from `start` (default: all highest)."""
    began = time.perf_counter()
    rng = np.random.default_rng(settings.seed)
    plan = start if start is not None else Plan({g.id: g.highest for g in groups})
    problem = _Problem(table, latency, settings, latency(plan))
    current = problem.objective(plan)
    ema = current
    visited: dict[Plan, float] = {plan: current}
    proposed = accepted = 0
    for _ in range(settings.samples):
        moves = _propose(plan, groups, settings.move_probability, rng)
        taken = [m for m in moves if accept(problem.objective(plan.replace(*m)), ema, settings.temperature, rng)]
        proposed, accepted = proposed + len(moves), accepted + len(taken)
        for group_id, candidate in taken:
            plan = plan.replace(group_id, candidate)
        if plan not in visited:
            visited[plan] = problem.objective(plan)
        ema = (1 - settings.beta) * ema + settings.beta * visited[plan]
    best = tuple(replace(p, bops_rel=_relative(p.plan, bops, reference_bops)) for p in _best(visited, problem, settings))
    return AmedResult(best, settings.samples, proposed, accepted, time.perf_counter() - began)


def _propose(plan: Plan, groups: Sequence[QuantizerGroup], probability: float, rng: np.random.Generator):
    """Rule 2: (group id, candidate) moves, in group order."""
    chosen = [g for g in groups if rng.random() < probability]
    if not chosen:
        chosen = [groups[int(rng.integers(len(groups)))]]
    moves = []
    for group in chosen:
        step = 1 if rng.random() < 0.5 else -1
        index = group.candidates.index(plan[group.id]) + step
        if 0 <= index < len(group.candidates):
            moves.append((group.id, group.candidates[index]))
    return moves


def _best(visited: dict[Plan, float], problem: _Problem, settings: AmedSettings) -> tuple[ParetoPoint, ...]:
    budget = settings.budget_ms
    ranked = sorted(visited.items(), key=lambda item: item[1])
    points = []
    for plan, _ in ranked:
        ms = problem.latency(plan)
        if budget is not None and ms > budget:
            continue
        points.append(ParetoPoint(float("nan"), problem.table.predicted_sqnr_db(plan), plan, latency_ms=ms))
        if len(points) == settings.keep:
            break
    return tuple(points)


def _relative(plan: Plan, bops: Mapping[str, Mapping[Candidate, int]], reference: int) -> float:
    return sum(bops[g][c] for g, c in plan.items()) / reference if reference else 0.0


def pick_measured(points: Sequence[ParetoPoint], measure: Callable[[Plan], float]) -> tuple[ParetoPoint, list[float]]:
    """The point whose measured quality (higher is better) is highest, and every measurement."""
    scores = [float(measure(p.plan)) for p in points]
    return points[int(np.argmax(scores))], scores


def strategy(space: SearchSpace, options: StrategyOptions) -> ParetoCurve:
    """The strategy interface: AMED's best samples within `options.target_latency_ms`, best
    (lowest objective) first; the selection measures them and keeps the best measured."""
    if space.table is None or space.latency is None or options.target_latency_ms is None:
        raise BudgetError("strategy amed needs a latency budget (--target-latency) and a profile with a latency model")
    settings = AmedSettings(samples=options.samples, seed=options.seed, budget_ms=options.target_latency_ms)
    result = amed_search(space.table, space.groups, space.group_bops, space.reference_bops, space.latency, settings)
    if not result.best:
        raise BudgetError(f"AMED found no allocation within {options.target_latency_ms:g} ms in {result.samples} samples")
    logger.info("amed: %d samples, acceptance rate %.3f, %.1f s", result.samples, result.acceptance_rate, result.seconds)
    return result.best
