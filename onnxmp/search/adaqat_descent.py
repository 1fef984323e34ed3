"""AdaQAT's bit-width descent (Gernigon et al. 2024, eq. 2-4) for one lambda, on real-valued widths.

Why: AdaQAT learns bit-widths as real numbers N (weights N_w, activations N_a) whose ceilings
are the widths used; the task loss is not differentiable in N, so its gradient is the finite
difference between ceil(N) and the width one bit lower, and N moves against the gradient of
L_task + lambda * L_hard with small learning rates until it oscillates around the width where
the two losses balance.

Rule cases (the PTQ form; README "Other strategies" says why each departs from the paper):
1. A variable is one relaxed width: one per group and axis (per-group mode), or one per axis
   for the whole network (per-network mode, the paper's). An axis with a single allowed width
   has no variable; groups without BOPs (no MACs) keep their highest candidate.
2. ceil(N) is mapped onto the nearest allowed kernel at or above it: each width is rounded up
   to the group's next allowed width, then the cheapest kernel with at least both widths is
   taken (npu has no W4A16: (4, 16) runs on W8A16). The finite difference compares it with
   the kernel one allowed width lower on the variable's axis (the paper's floor(N): one bit
   lower on its full grid of widths). Rounding to the nearest width instead would leave
   stretches where ceil and floor map to one kernel and only lambda acts, so a width would
   slide through missing kernels unopposed.
3. The gradient of a variable is ((L_task(ceil) - L_task(lower)) / (L_hard(ceil) - L_hard(lower))
   + lambda) times dL_hard/dN: the task difference is taken per BOP because the two kernels
   can lie several bits apart, and the step divides by dL_hard/dN (a diagonal
   preconditioner), so one lambda is one price in noise per relative BOP for every group,
   and every group moves at the paper's rates: eta_w = 0.001, eta_a = 0.0005. Fixed points
   are those of the plain gradient. A variable with no cheaper kernel below it is blocked.
4. N stays in (lowest allowed width - 1, highest allowed width]. After 10 sign changes of its
   update a variable freezes at the larger ceiling of its two oscillation points.
5. All variables update together from one evaluation of the current widths, as in the paper.
   Between two events (a ceiling changes, a bound is hit) every gradient is constant, so the
   descent jumps from event to event: the same trajectory as stepping one by one, without
   the thousands of identical steps the small learning rates make.
"""

from __future__ import annotations

import enum
import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from onnxmp.records import Candidate, QuantizerGroup

ETA_W, ETA_A = 0.001, 0.0005
OSCILLATION_LIMIT = 10
MAX_STEPS = 10**9  # steps cost nothing between events (rule 5); the cap only guards

# L_task(plan) - L_task(plan with the lowered groups), plan and lowered as group id -> candidate
TaskDelta = Callable[[Mapping[str, Candidate], Mapping[str, Candidate]], float]


class Axis(enum.Enum):
    """Which width a variable relaxes."""

    WEIGHT = "w"
    ACTIVATION = "a"


@dataclass(frozen=True)
class Variable:
    """One real-valued bit-width and the groups whose kernels its ceiling decides."""

    axis: Axis
    groups: tuple[QuantizerGroup, ...]
    low: float  # exclusive in spirit: ceil(low) is the lowest allowed width
    high: float

    @property
    def eta(self) -> float:
        return ETA_W if self.axis is Axis.WEIGHT else ETA_A


@dataclass(frozen=True)
class Problem:
    """One descent: the variables, the cost model and the task loss difference."""

    variables: tuple[Variable, ...]
    group_bops: Mapping[str, Mapping[Candidate, int]]
    reference_bops: int
    task_delta: TaskDelta
    lam: float
    max_steps: int = MAX_STEPS
    start: tuple[float, ...] = ()  # initial N per variable; default each variable's highest width


@dataclass(frozen=True)
class Descent:
    """Where the descent ended: the kernels, each variable's N, sign changes and freeze, and the steps."""

    kernels: Mapping[str, Candidate]
    widths: tuple[float, ...]
    flips: tuple[int, ...]
    frozen: tuple[int | None, ...]  # the ceiling a variable froze at, None if it never froze
    steps: int


@functools.cache
def widths(group: QuantizerGroup, axis: Axis) -> tuple[int, ...]:
    """Allowed widths of `group` on `axis`, ascending."""
    bits = {c.w_bits if axis is Axis.WEIGHT else c.a_bits for c in group.candidates}
    return tuple(sorted(b for b in bits if b is not None))


def variable(axis: Axis, groups: Sequence[QuantizerGroup]) -> Variable:
    allowed = [b for g in groups for b in widths(g, axis)]
    return Variable(axis, tuple(groups), min(allowed) - 1 + 1e-6, float(max(allowed)))


@functools.cache
def allowed_kernel(group: QuantizerGroup, w_bits: int, a_bits: int) -> Candidate:
    """The cheapest kernel with at least `w_bits` and `a_bits` (the highest when none has)."""
    covering = [c for c in group.candidates if (c.w_bits is None or c.w_bits >= w_bits) and c.a_bits >= a_bits]
    return min(covering, key=lambda c: (c.cost(), group.candidates.index(c))) if covering else group.highest


def kernels(problem: Problem, ceilings: Sequence[int], lowered: int | None = None) -> dict[str, Candidate]:
    """Each group's kernel at the variables' ceilings (rule 2); variable `lowered` one allowed width lower."""
    target: dict[str, dict[Axis, int]] = {}
    for i, var in enumerate(problem.variables):
        for group in var.groups:
            target.setdefault(group.id, {})[var.axis] = ceilings[i]
    result = {}
    for group in {g.id: g for var in problem.variables for g in var.groups}.values():
        bits = {axis: _round_up(group, axis, target[group.id].get(axis)) for axis in Axis}
        if lowered is not None and group in problem.variables[lowered].groups:
            axis = problem.variables[lowered].axis
            bits[axis] = max((b for b in widths(group, axis) if b < bits[axis]), default=bits[axis])
        result[group.id] = allowed_kernel(group, bits[Axis.WEIGHT], bits[Axis.ACTIVATION])
    return result


@functools.cache
def _round_up(group: QuantizerGroup, axis: Axis, bits: int | None) -> int:
    allowed = widths(group, axis)
    if bits is None:
        return allowed[-1]
    return min((b for b in allowed if b >= bits), default=allowed[-1])


def descend(problem: Problem) -> Descent:
    """Run the descent until every variable is frozen or cannot move, or for max_steps steps."""
    n = list(problem.start) or [var.high for var in problem.variables]
    frozen: list[int | None] = [None] * len(n)
    last_sign, flips = [0] * len(n), [0] * len(n)
    steps = 0
    while steps < problem.max_steps:
        ceilings = [f if f is not None else math.ceil(x) for x, f in zip(n, frozen, strict=True)]
        moves = [0.0 if frozen[i] is not None else _move(problem, ceilings, i) for i in range(len(n))]
        for i, move in enumerate(moves):
            sign = (move > 0) - (move < 0)
            if sign and last_sign[i] and sign != last_sign[i]:
                flips[i] += 1
            last_sign[i] = sign or last_sign[i]
            if frozen[i] is None and flips[i] >= OSCILLATION_LIMIT:
                frozen[i] = max(math.ceil(n[i]), math.ceil(n[i] + move))
        active = [i for i, m in enumerate(moves) if frozen[i] is None and _can_move(problem.variables[i], n[i], m)]
        if not active:
            break
        jump = min(min(_steps_to_event(problem.variables[i], n[i], moves[i]) for i in active), problem.max_steps - steps)
        for i in active:
            var = problem.variables[i]
            n[i] = min(max(n[i] + jump * moves[i], var.low), var.high)
        steps += jump
    ceilings = [f if f is not None else math.ceil(x) for x, f in zip(n, frozen, strict=True)]
    return Descent(kernels(problem, ceilings), tuple(n), tuple(flips), tuple(frozen), steps)


def _move(problem: Problem, ceilings: Sequence[int], i: int) -> float:
    """-eta * preconditioned gradient of variable i (rule 3)."""
    var = problem.variables[i]
    current = kernels(problem, ceilings)
    lowered = {g.id: c for g, c in zip(var.groups, _lowered(problem, ceilings, i, var), strict=True)}
    saved = sum(problem.group_bops[g][current[g]] - problem.group_bops[g][lowered[g]] for g in lowered)
    hard = saved / problem.reference_bops if problem.reference_bops else 0.0
    if hard <= 0:  # no cheaper kernel below: the variable is blocked
        return 0.0
    return -var.eta * (problem.task_delta(current, lowered) / hard + problem.lam)


def _lowered(problem: Problem, ceilings: Sequence[int], i: int, var: Variable) -> list[Candidate]:
    lowered = kernels(problem, ceilings, lowered=i)
    return [lowered[g.id] for g in var.groups]


def _can_move(var: Variable, n: float, move: float) -> bool:
    return (move < 0 and n > var.low) or (move > 0 and n < var.high)


def _steps_to_event(var: Variable, n: float, move: float) -> int:
    """Steps of size `move` until ceil(n) changes or a bound is reached (at least 1)."""
    ceiling = math.ceil(n)
    if move < 0:
        to_ceiling = (n - (ceiling - 1)) / -move
        to_bound = (n - var.low) / -move
    else:
        to_ceiling = math.floor((ceiling - n) / move) + 1
        to_bound = (var.high - n) / move
    return max(1, math.ceil(min(to_ceiling, to_bound)))
