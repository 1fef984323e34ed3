"""The search space every strategy reads, the knobs a user sets, and the one strategy signature.

Why: greedy, MixQuant and AdaQAT choose among the same groups, candidates and cost model and
are scored the same way (a phase-1 table for predictions, a measuring function where a
strategy must measure), so they take one record and return one kind of value: a ParetoCurve,
sorted by decreasing relative BOPs, that the selection (`select_by_bops`, `select_by_target`)
works on whatever strategy made it. Strategies stay pure: a measuring function is a
parameter, never an ONNX Runtime session of their own.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from onnxmp.records import (
    Candidate,
    ParetoCurve,
    ParetoPoint,
    Plan,
    QuantizerGroup,
    SensitivityTable,
)


@dataclass(frozen=True, slots=True)
class QuantErrorTable:
    """MixQuant's layer-wise quantization error: MSE(W, dequant(quant(W))) per (group, w_bits).

    A group with several weights has one error: the squared errors of all its weights'
    elements summed, over their total count.
    """

    mse: Mapping[tuple[str, int], float]

    def of(self, group_id: str, w_bits: int) -> float:
        return self.mse[(group_id, w_bits)]


@dataclass(frozen=True)
class SearchSpace:
    """What a strategy chooses from and how it scores a configuration.

    `table` (phase 1) gives predicted SQNRs; `quant_errors` is MixQuant's input;
    `measure(plan)` returns the measured output noise-to-signal ratio of a configuration
    (10^(-SQNR/10)) for strategies that measure, and is None when nothing may be measured.
    """

    groups: tuple[QuantizerGroup, ...]
    group_bops: Mapping[str, Mapping[Candidate, int]]
    reference_bops: int
    table: SensitivityTable | None = None
    quant_errors: QuantErrorTable | None = None
    measure: Callable[[Plan], float] | None = None
    latency: Callable[[Plan], float] | None = None  # the profile's latency model (ms), if any

    def relative_bops(self, plan: Mapping[str, Candidate]) -> float:
        if not self.reference_bops:
            return 0.0
        return sum(self.group_bops[g][c] for g, c in plan.items()) / self.reference_bops

    def point(self, plan: Plan) -> ParetoPoint:
        """The curve record of `plan` (predicted SQNR is NaN without a phase-1 table)."""
        predicted = self.table.predicted_sqnr_db(plan) if self.table is not None else math.nan
        return ParetoPoint(self.relative_bops(plan), predicted, plan)

    def highest_plan(self) -> Plan:
        return Plan({g.id: g.highest for g in self.groups})


@dataclass(frozen=True)
class StrategyOptions:
    """What the user set for the strategy run; each strategy reads only its own fields.

    `target_bops` lets MixQuant and AdaQAT bisect their knob (QEM, lambda) for a point at or
    just below the budget; `qem` and `lam` fix the knob to one value (a one-point curve);
    `per_network` is AdaQAT's mode with one (N_w, N_a) pair for the whole network, as in
    the paper; `measured` makes AdaQAT's task loss the measured output noise
    (`SearchSpace.measure`) instead of the phase-1 prediction; `seed` seeds whatever a
    strategy draws (neither MixQuant nor AdaQAT draws: their PTQ forms are deterministic).
    """

    target_bops: float | None = None
    qem: float | None = None
    lam: float | None = None
    per_network: bool = False
    measured: bool = False
    seed: int = 0
    target_latency_ms: float | None = None  # AMED's budget; greedy prices moves in ms when set
    by_latency: bool = False  # greedy prices moves in ms (the latency cost axis)
    samples: int = 2000  # AMED's chain length


StrategyFunction = Callable[[SearchSpace, StrategyOptions], ParetoCurve]


def curve_of(space: SearchSpace, plans: Iterable[Plan]) -> ParetoCurve:
    """The distinct plans as points, by decreasing relative BOPs (ties: first seen first)."""
    seen: dict[Plan, ParetoPoint] = {}
    for plan in plans:
        if plan not in seen:
            seen[plan] = space.point(plan)
    ordered = sorted(enumerate(seen.values()), key=lambda item: (-item[1].bops_rel, item[0]))
    return tuple(point for _, point in ordered)


def pareto_front(curve: ParetoCurve) -> ParetoCurve:
    """The points of a curve (by decreasing BOPs) that no cheaper-or-equal point beats on predicted SQNR.

    Without predictions (NaN) the curve is returned as it is.
    """
    if any(math.isnan(p.predicted_sqnr_db) for p in curve):
        return curve
    kept = []
    for i, point in enumerate(curve):
        if all(later.predicted_sqnr_db < point.predicted_sqnr_db for later in curve[i + 1 :]):
            kept.append(point)
    return tuple(kept)
