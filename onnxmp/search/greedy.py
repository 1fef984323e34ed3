"""Phase 2: the Pareto curve by greedy flips (Pandey et al. 2023, §3.2).

Why: phase 1 measured each group alone; quantization noise from different groups adds
nearly independently at the output, so a configuration's noise is predicted as the sum of
its groups' noise-to-signal ratios, r_g(c) = 10^(-SQNR(g, c) / 10), and its predicted SQNR
is -10 log10(sum_g r_g). A pure function of the table: no ONNX Runtime here.

Rule cases:
1. Start with every group at its highest candidate (the first point).
2. A move takes one group to its next-lower cost level (the next strictly smaller BOPs; among
   candidates with equal BOPs, e.g. W6A8 and W8A6, the one with less noise). The move
   taken is the one with the least predicted noise increase per BOP saved; ties go to the
   group that comes first in the network.
3. A move that saves no BOPs is never taken, so groups without MACs (an Add, a pooling)
   keep their highest candidate. The curve ends when no group can save BOPs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

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
from onnxmp.search.latency_greedy import latency_curve, with_latency
from onnxmp.search.space import SearchSpace, StrategyOptions


def predicted_sqnr_db(plan: Plan, table: SensitivityTable) -> float:
    """-10 log10 of the summed noise ratios of the plan's groups (+inf if all are zero)."""
    return table.predicted_sqnr_db(plan)


def pareto_curve(
    table: SensitivityTable,
    groups: Sequence[QuantizerGroup],
    bops: Mapping[str, Mapping[Candidate, int]],
    reference_bops: int,
) -> ParetoCurve:
    """Every configuration the greedy flips visit, from all-highest to the cheapest reachable."""
    plan = Plan({g.id: g.highest for g in groups})
    total_bops = sum(bops[g.id][g.highest] for g in groups)
    points = [_point(plan, total_bops, reference_bops, table)]
    while True:
        move = _best_move(plan, groups, bops, table)
        if move is None:
            return tuple(points)
        group_id, candidate = move
        total_bops -= bops[group_id][plan[group_id]] - bops[group_id][candidate]
        plan = plan.replace(group_id, candidate)
        points.append(_point(plan, total_bops, reference_bops, table))


def search(space: SearchSpace, options: StrategyOptions) -> ParetoCurve:
    """The strategy interface: greedy reads only the phase-1 table of the search space."""
    if space.table is None:
        raise ValueError("greedy needs the phase-1 table (SearchSpace.table)")
    if options.by_latency or options.target_latency_ms is not None:  # moves priced in ms
        if space.latency is None:
            raise BudgetError("a latency budget or cost axis needs a profile with a latency model (a `latency:` section)")
        return latency_curve(space.table, space.groups, space.group_bops, space.reference_bops, space.latency)
    curve = pareto_curve(space.table, space.groups, space.group_bops, space.reference_bops)
    return curve if space.latency is None else with_latency(curve, space.latency)


def _point(plan: Plan, total_bops: int, reference_bops: int, table: SensitivityTable) -> ParetoPoint:
    return ParetoPoint(
        bops_rel=total_bops / reference_bops if reference_bops else 0.0,
        predicted_sqnr_db=predicted_sqnr_db(plan, table),
        plan=plan,
    )


def _best_move(plan: Plan, groups: Sequence[QuantizerGroup], bops, table: SensitivityTable):
    best = None
    for group in groups:
        move = _next_lower(group, plan[group.id], bops[group.id], table)
        if move is None:
            continue
        candidate, saved = move
        added_noise = noise_ratio(table.of(group.id, candidate)) - noise_ratio(table.of(group.id, plan[group.id]))
        cost = added_noise / saved
        if best is None or cost < best[0]:
            best = (cost, group.id, candidate)
    return None if best is None else (best[1], best[2])


def _next_lower(group: QuantizerGroup, current: Candidate, bops: Mapping[Candidate, int], table: SensitivityTable):
    """The least-noise candidate at the next strictly smaller BOPs level, and the BOPs saved."""
    cheaper = [c for c in group.candidates if bops[c] < bops[current]]
    if not cheaper:
        return None
    level = max(bops[c] for c in cheaper)
    at_level = [c for c in cheaper if bops[c] == level]
    best = min(at_level, key=lambda c: (noise_ratio(table.of(group.id, c)), group.candidates.index(c)))
    return best, bops[current] - level
