"""Phase 2 with latency as the cost: the greedy curve of `greedy`, priced in milliseconds.

Why: on a device whose latency is not proportional to BOPs (a memory-bound layer gains
nothing from narrower weights; ONNX Runtime runs W4 slower than float), the walk must
spend noise where it buys time. Latency is a function of the whole plan (a layer writes its
output at its reader's width), so each move is priced by the latency of the plan it makes.

Rule cases:
1. Start with every group at its highest candidate.
2. A move takes one group to its next-lower latency level given the current plan (the
   largest latency among its candidates that lower the plan's latency; ties go to less
   noise). The move taken adds the least predicted noise per millisecond saved; ties go to
   the group that comes first in the network.
3. A move that saves no time is never taken. When no single move saves time, a run move is
   taken as one move: a run of consecutive groups (graph order) all to one kernel (a weighted
   group to the kernel, a weightless one to its activation width, a group that has neither
   unchanged). Among the runs that save time, the one moving the fewest groups wins; ties go
   to the least added noise per millisecond saved, then to the kernel met first (highest
   first), the earlier start. The curve ends when neither a move nor a run saves time.
4. Every point carries relative BOPs and latency; `with_latency` adds latency to any curve.

Why runs: with ONNX Runtime's border costs (onnxmp.phase1.ort_borders) one integer group
among float ones pays two borders, and on EfficientNet-Lite0 a border costs about as much
as five groups save by running int8, so from the all-float start no single flip (nor pair)
saves time even though all-int8 is twice as fast; a run pays its two borders once for all
its groups' savings, and once a run exists, growing it by one group moves a border without
adding one, so single moves continue from there. The smallest saving run, not the one with
the least noise per ms: that one is usually the whole network (it has no border at all), a
jump from all-float to all-int8 in one point that leaves no configuration between them for a
target all-int8 misses (int8 but for the sensitive groups). Every move is priced by the latency of the whole plan it makes, so a
flip includes the border changes with its neighbours' current choices, and every group's
marginal cost is recomputed after each flip (the affected ones among them; exact for any
latency model, systolic too, at G x candidates evaluations a step).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

from onnxmp.records import (
    Candidate,
    ParetoCurve,
    ParetoPoint,
    Plan,
    QuantizerGroup,
    SensitivityTable,
    noise_ratio,
)

Latency = Callable[[Plan], float]


def latency_curve(
    table: SensitivityTable,
    groups: Sequence[QuantizerGroup],
    bops: Mapping[str, Mapping[Candidate, int]],
    reference_bops: int,
    latency: Latency,
) -> ParetoCurve:
    """Every configuration the latency-priced greedy flips visit, all-highest first."""
    plan = Plan({g.id: g.highest for g in groups})
    points = [_point(plan, table, bops, reference_bops, latency(plan))]
    while True:
        move = _best_move(plan, groups, table, latency, points[-1].latency_ms)
        if move is None:
            move = _best_run(plan, groups, table, latency, points[-1].latency_ms)
        if move is None:
            return tuple(points)
        plan, ms = move
        points.append(_point(plan, table, bops, reference_bops, ms))


def with_latency(curve: ParetoCurve, latency: Latency) -> ParetoCurve:
    """The same points, each with its `latency_ms`."""
    return tuple(replace(p, latency_ms=latency(p.plan)) for p in curve)


def _point(plan: Plan, table: SensitivityTable, bops, reference_bops: int, ms: float) -> ParetoPoint:
    total = sum(bops[g][c] for g, c in plan.items())
    return ParetoPoint(
        bops_rel=total / reference_bops if reference_bops else 0.0,
        predicted_sqnr_db=table.predicted_sqnr_db(plan),
        plan=plan,
        latency_ms=ms,
    )


def _best_move(plan: Plan, groups, table: SensitivityTable, latency: Latency, current_ms: float):
    best = None
    for group in groups:
        move = _next_lower(group, plan, table, latency, current_ms)
        if move is None:
            continue
        candidate, ms = move
        added = noise_ratio(table.of(group.id, candidate)) - noise_ratio(table.of(group.id, plan[group.id]))
        price = added / (current_ms - ms)
        if best is None or price < best[0]:
            best = (price, plan.replace(group.id, candidate), ms)
    return None if best is None else best[1:]


def _next_lower(group: QuantizerGroup, plan: Plan, table: SensitivityTable, latency: Latency, current_ms: float):
    """The least-noise candidate at the next strictly lower latency, and that latency."""
    times = {c: latency(plan.replace(group.id, c)) for c in group.candidates if c != plan[group.id]}
    faster = {c: ms for c, ms in times.items() if ms < current_ms - 1e-12}
    if not faster:
        return None
    level = max(faster.values())
    at_level = [c for c, ms in faster.items() if ms == level]
    best = min(at_level, key=lambda c: (noise_ratio(table.of(group.id, c)), group.candidates.index(c)))
    return best, level


def _best_run(plan: Plan, groups, table: SensitivityTable, latency: Latency, current_ms: float):
    """Rule 3's run: the fewest consecutive groups moved to one kernel that save time."""
    kernels = list(dict.fromkeys(c for g in groups for c in g.candidates if c.w_bits is not None))
    best = None
    for kernel in kernels:
        for start in range(len(groups)):
            moved, added, count = plan, 0.0, 0
            for group in groups[start:]:
                target = _run_target(group, kernel)
                if target is None or target == moved[group.id]:
                    continue
                added += _added(table, group.id, moved[group.id], target)
                moved, count = moved.replace(group.id, target), count + 1
                ms = latency(moved)
                if ms < current_ms - 1e-12:
                    key = (count, added / (current_ms - ms))
                    if best is None or key < best[0]:
                        best = (key, moved, ms)
                    break  # a longer run from this start moves more groups
    return None if best is None else best[1:]


def _run_target(group: QuantizerGroup, kernel: Candidate) -> Candidate | None:
    for candidate in (kernel, Candidate(None, kernel.a_bits)):
        if candidate in group.candidates:
            return candidate
    return None


def _added(table: SensitivityTable, group_id: str, before: Candidate, after: Candidate) -> float:
    return noise_ratio(table.of(group_id, after)) - noise_ratio(table.of(group_id, before))
