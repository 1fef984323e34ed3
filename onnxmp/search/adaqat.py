"""AdaQAT (Gernigon et al. 2024) as a PTQ strategy: lambda decides, the descent finds the widths.

Why: AdaQAT's objective L_task + lambda * L_hard (here L_hard = relative BOPs and L_task the
output noise-to-signal ratio) prices noise against cost with one number, lambda. `--lam`
runs one lambda; `--target-bops` bisects lambda (in log space) for the configuration at or
just below the budget; with neither, a sweep of lambdas gives AdaQAT's own curve (`sweep`).

Rule cases:
1. L_task is predicted from phase 1 by default: the noise-to-signal ratios of the groups add
   (the model behind greedy's predicted SQNR), so per-group descents are independent and the
   network's descent is one descent per group. With `StrategyOptions.measured`, L_task of
   each configuration is `SearchSpace.measure(plan)` (memoized within a call); the descent is
   then joint, and each new configuration costs one measurement.
2. `per_network` uses one (N_w, N_a) pair for all groups, the paper's setting.
3. Larger lambda gives cheaper configurations; the curve holds the plans of every lambda run
   (the sweep, or the ~40 of the bisection), minus those a cheaper-or-equal plan beats on
   predicted SQNR (the freeze at the larger oscillation point can leave a costlier plan that
   is also noisier). With a budget, the selection takes the costliest remaining plan at or
   below it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping

from onnxmp.records import Candidate, ParetoCurve, Plan, noise_ratio
from onnxmp.search.adaqat_descent import Axis, Problem, TaskDelta, descend, variable, widths
from onnxmp.search.space import SearchSpace, StrategyOptions, curve_of, pareto_front

PER_DECADE = 8
BISECTION_STEPS = 30


def configuration(space: SearchSpace, options: StrategyOptions, lam: float, task: TaskDelta | None = None) -> Plan:
    """The plan AdaQAT settles on for one lambda."""
    task = task or task_delta(space, options)
    plan = dict(space.highest_plan())
    movable = [g for g in space.groups if any(space.group_bops[g.id].values()) and g.highest.w_bits is not None]
    if options.per_network or options.measured:
        plan.update(descend(_problem(space, movable, options.per_network, task, lam)).kernels)
    else:
        for group in movable:
            plan.update(descend(_problem(space, [group], False, task, lam)).kernels)
    return Plan(plan)


def _problem(space: SearchSpace, groups, per_network: bool, task: TaskDelta, lam: float) -> Problem:
    variables = []
    for axis in (Axis.WEIGHT, Axis.ACTIVATION):
        varying = [g for g in groups if len(widths(g, axis)) > 1]
        if per_network and varying:
            variables.append(variable(axis, varying))
        elif not per_network:
            variables.extend(variable(axis, [g]) for g in varying)
    return Problem(tuple(variables), space.group_bops, space.reference_bops, task, lam)


def task_delta(space: SearchSpace, options: StrategyOptions) -> TaskDelta:
    """L_task(plan) - L_task(plan with `lowered`): predicted (additive) or measured."""
    if options.measured:
        if space.measure is None:
            raise ValueError("measured AdaQAT needs SearchSpace.measure")
        return _measured_delta(space.highest_plan(), functools.cache(space.measure))
    if space.table is None:
        raise ValueError("predicted AdaQAT needs the phase-1 table (SearchSpace.table)")
    table = space.table

    def predicted(plan: Mapping[str, Candidate], lowered: Mapping[str, Candidate]) -> float:
        return sum(noise_ratio(table.of(g, plan[g])) - noise_ratio(table.of(g, c)) for g, c in lowered.items())

    return predicted


def _measured_delta(base: Plan, measure: Callable[[Plan], float]) -> TaskDelta:
    def measured(plan: Mapping[str, Candidate], lowered: Mapping[str, Candidate]) -> float:
        full = Plan({**base, **plan})
        return measure(full) - measure(Plan({**full, **lowered}))

    return measured


def lam_for_budget(space: SearchSpace, options: StrategyOptions, task: TaskDelta | None = None) -> tuple[float, list[Plan]]:
    """The lambda whose plan is the costliest at or below `options.target_bops`, and every plan visited."""
    task = task or task_delta(space, options)
    if options.target_bops is None:
        raise ValueError("lam_for_budget needs options.target_bops")
    target = options.target_bops + 1e-12
    visited: dict[float, Plan] = {}

    def bops_at(lam: float) -> float:
        visited[lam] = configuration(space, options, lam, task)
        return space.relative_bops(visited[lam])

    if bops_at(0.0) <= target:
        return 0.0, list(visited.values())
    lo, hi = 0.0, 1.0
    while bops_at(hi) > target:
        if hi >= 1e12:  # out of reach: the selection names the cheapest point
            return hi, list(visited.values())
        lo, hi = hi, hi * 10
    for _ in range(BISECTION_STEPS):
        mid = math.sqrt(lo * hi) if lo > 0 else hi / 10
        lo, hi = (mid, hi) if bops_at(mid) > target else (lo, mid)
    fitting = [lam for lam, plan in visited.items() if space.relative_bops(plan) <= target]
    best = max(fitting, key=lambda lam: (space.relative_bops(visited[lam]), -lam), default=hi)
    return best, list(visited.values())


def pareto_curve(space: SearchSpace, options: StrategyOptions) -> ParetoCurve:
    """One point for `options.lam`; the bisection's plans for a budget; otherwise the sweep."""
    task = task_delta(space, options)
    if options.lam is not None:
        return curve_of(space, [configuration(space, options, options.lam, task)])
    if options.target_bops is not None:
        return pareto_front(curve_of(space, lam_for_budget(space, options, task)[1]))
    return pareto_front(curve_of(space, [configuration(space, options, lam, task) for lam in (0.0, *sweep(space))]))


def sweep(space: SearchSpace) -> tuple[float, ...]:
    """Lambdas 8 per decade over the prices (noise added per relative BOP saved) phase 1 predicts
    between any two kernels of a group (0.001 to 10^5 without a table), so the sweep spans
    every configuration from the costliest to the cheapest."""
    prices = []
    if space.table is not None and space.reference_bops:
        for group in space.groups:
            bops = space.group_bops[group.id]
            for hi in group.candidates:
                for lo in group.candidates:
                    saved = (bops[hi] - bops[lo]) / space.reference_bops
                    added = noise_ratio(space.table.of(group.id, lo)) - noise_ratio(space.table.of(group.id, hi))
                    if saved > 0 and added > 0:
                        prices.append(added / saved)
    low, high = (min(prices) / 2, max(prices) * 2) if prices else (1e-3, 1e5)
    first, last = math.floor(math.log10(low) * PER_DECADE), math.ceil(math.log10(high) * PER_DECADE)
    return tuple(10 ** (k / PER_DECADE) for k in range(first, last + 1))
