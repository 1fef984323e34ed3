"""Pick a point on the Pareto curve: by BOPs budget, or by a quality target with few evaluations.

Why: measuring a point (true SQNR or accuracy) costs a run over data, so the cheapest point
meeting a target is found by searching the curve, not by measuring all of it.

Rule cases:
1. BOPs budget R: the point with the largest relative BOPs <= R (the curve is sorted by
   decreasing BOPs); R below the cheapest point is a BudgetError naming the range. A
   latency budget takes the first point at or below it (latency decreases along a
   latency curve; on a BOPs curve the first such point is the least noisy one).
2. Quality target t, with `evaluate(index) -> quality` (higher is better); the answer is
   the cheapest point measured to meet t:
   - SEQUENTIAL walks from the cheapest point up, the reference answer (n evaluations worst);
   - BINARY bisects for the last point meeting t (about log2 n evaluations);
   - HYBRID (the paper's): two binary steps pick one of four sub-curves, then interpolation
     search inside it, falling back to bisection whenever an interpolation step fails to
     halve the bracket, so it never needs more than a few evaluations over binary.
   On a monotone curve all three return the same point. On a measured curve that is not
   monotone, BINARY and HYBRID return a point that was measured to meet t and whose
   measured cheaper neighbour in the bracket misses it; it always meets t, but a cheaper
   point beyond a dip may exist (SEQUENTIAL finds the cheapest).
3. If even the first (highest) point misses t, a BudgetError names its measured value.
Each index is evaluated at most once; `Selection.evaluations` counts the calls.
"""

from __future__ import annotations

from collections.abc import Callable

from onnxmp.errors import BudgetError
from onnxmp.records import ParetoCurve, SearchMethod, Selection, SelectionMethod

_TOLERANCE = 1e-9


def select_by_bops(curve: ParetoCurve, target: float) -> Selection:
    """The point at or just below relative BOPs `target`."""
    fitting = [i for i, p in enumerate(curve) if p.bops_rel <= target + _TOLERANCE]
    if not fitting:
        raise BudgetError(
            f"target BOPs {target:g} is below the cheapest configuration "
            f"({curve[-1].bops_rel:.4f}); achievable: {curve[-1].bops_rel:.4f} to {curve[0].bops_rel:.4f}"
        )
    index = fitting[0]
    return Selection(curve[index], index, evaluations=0, method=SelectionMethod.BOPS)


def select_by_latency(curve: ParetoCurve, target_ms: float) -> Selection:
    """The first point (the least noisy, on a greedy curve) whose latency is at most `target_ms`."""
    fitting = [i for i, p in enumerate(curve) if p.latency_ms is not None and p.latency_ms <= target_ms + _TOLERANCE]
    if not fitting:
        fastest = min(p.latency_ms for p in curve if p.latency_ms is not None)
        raise BudgetError(f"target latency {target_ms:g} ms is below the fastest configuration ({fastest:.4g} ms)")
    return Selection(curve[fitting[0]], fitting[0], evaluations=0, method=SelectionMethod.LATENCY)


def select_best(curve: ParetoCurve, evaluate: Callable[[int], float]) -> Selection:
    """The point with the highest evaluated quality, every point evaluated (AMED's best samples)."""
    scores = [float(evaluate(i)) for i in range(len(curve))]
    index = scores.index(max(scores))
    return Selection(curve[index], index, evaluations=len(curve), method=SelectionMethod.MEASURED_BEST)


def select_by_target(
    curve: ParetoCurve,
    evaluate: Callable[[int], float],
    threshold: float,
    *,
    method: SearchMethod = SearchMethod.HYBRID,
    what: str = "quality",
) -> Selection:
    """The cheapest point whose evaluated quality is >= `threshold`."""
    memo: dict[int, float] = {}

    def quality(i: int) -> float:
        if i not in memo:
            memo[i] = float(evaluate(i))
        return memo[i]

    search = {SearchMethod.SEQUENTIAL: _sequential, SearchMethod.BINARY: _binary, SearchMethod.HYBRID: _hybrid}
    index = search[method](len(curve), quality, threshold)
    if index < 0:
        raise BudgetError(
            f"{what} target {threshold:g} is not met even by the highest configuration "
            f"(measured {quality(0):g} at relative BOPs {curve[0].bops_rel:.4f})"
        )
    return Selection(curve[index], index, evaluations=len(memo), method=SelectionMethod(method.value))


def _sequential(n: int, quality: Callable[[int], float], threshold: float) -> int:
    for i in range(n - 1, -1, -1):
        if quality(i) >= threshold:
            return i
    return -1


def _binary(n: int, quality: Callable[[int], float], threshold: float, lo: int = -1, hi: int | None = None) -> int:
    """Last index meeting the threshold in (lo, hi); lo meets (or is -1), hi misses (or is n)."""
    hi = n if hi is None else hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if quality(mid) >= threshold:
            lo = mid
        else:
            hi = mid
    return lo


def _hybrid(n: int, quality: Callable[[int], float], threshold: float) -> int:
    lo, hi = -1, n
    for _ in range(2):  # two binary steps: one of four sub-curves
        if hi - lo <= 1:
            return lo
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if quality(mid) >= threshold else (lo, mid)
    bisect_next = False
    while hi - lo > 1:
        if bisect_next or lo < 0 or hi >= n:
            probe = (lo + hi) // 2
        else:
            probe = _interpolate(lo, hi, quality(lo), quality(hi), threshold)
        width = hi - lo
        lo, hi = (probe, hi) if quality(probe) >= threshold else (lo, probe)
        bisect_next = (hi - lo) > width // 2
    return lo


def _interpolate(lo: int, hi: int, q_lo: float, q_hi: float, threshold: float) -> int:
    """Where the straight line from (lo, q_lo) to (hi, q_hi) crosses the threshold."""
    if q_lo == q_hi:
        return (lo + hi) // 2
    guess = lo + int((q_lo - threshold) / (q_lo - q_hi) * (hi - lo))
    return min(max(guess, lo + 1), hi - 1)
