"""Pick by measured whole-model latency among a few configurations that meet a target.

Why: a latency model is an estimate (on ONNX Runtime, per-group shares plus fitted border
costs); "the fastest model within 1 point" must be fastest when measured, and a homogeneous
configuration the curve never visited (all W8A8) may be faster than every mixed point. So
the selection measures a few options and picks by measurement, deterministically as far as
timing allows.

Rule cases (`options` in the caller's order: the selected point first, then the others):
1. Options are visited in order of estimated latency (ties: the caller's order). Each is
   measured (median and interquartile range of one run).
2. The choice starts at the first visited option that meets the target; a later one
   replaces it only if it meets the target and its measured median is lower by more than
   the noise: max(`noise_rel` x the lower median, the larger of the two IQRs). Differences
   within the noise keep the estimate's order, so reruns on a quiet machine agree.
3. `meets` is asked only for an option that would be chosen (quality evaluations are dear).
4. `verify_selection`: the options are the selected point, the other `VERIFIED - 1`
   cheapest-estimated points at or before it on the curve (noise grows along a curve, so
   those are the ones expected to meet the target) and the homogeneous configurations not
   on the curve. Every measured curve point gets `measured_latency_ms`; a homogeneous point
   chosen is appended to the curve as its last point. The selection's method stays what
   found the target; its evaluations count the quality evaluations `meets` made too.
5. `verify_budget` (a latency budget): the selected point is measured; if its median is over
   the budget by more than the noise, the next points along the curve (noisier, estimated
   faster) are measured, up to `VERIFIED` in all, and the first within it is chosen (the
   last measured if none is). Picking the fastest would throw away quality the budget allows.
6. `check_selection` picks the check: rule 4 for a quality target (`meets`) on a curve priced
   in ms, rule 5 for a latency budget, otherwise the chosen point is only measured.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

from onnxmp.phase1.ort_latency import Timing
from onnxmp.records import ParetoCurve, ParetoPoint, Plan, Selection

NOISE_REL = 0.03
VERIFIED = 3


def beyond_noise(faster: Timing, slower: Timing, noise_rel: float = NOISE_REL) -> bool:
    """Rule 2's test: `faster` is faster than `slower` by more than the noise.

    >>> beyond_noise(Timing(1.0, 0.01), Timing(1.2, 0.02)), beyond_noise(Timing(1.0, 0.01), Timing(1.02, 0.01))
    (True, False)
    """
    margin = max(noise_rel * min(faster.median_ms, slower.median_ms), faster.iqr_ms, slower.iqr_ms)
    return faster.median_ms < slower.median_ms - margin


def fastest_measured(
    options: Sequence[ParetoPoint],
    measure: Callable[[int], Timing],
    meets: Callable[[int], bool],
    noise_rel: float = NOISE_REL,
) -> tuple[int, dict[int, Timing]]:
    """The index (into `options`) rules 1-3 choose, and every measurement taken.

    Raises:
        ValueError: no option meets the target (the caller passes its selected point, which does).
    """
    order = sorted(range(len(options)), key=lambda i: (_estimate(options[i]), i))
    timings = {i: measure(i) for i in order}
    choice = None
    for i in order:
        if choice is None:
            choice = i if meets(i) else None
        elif beyond_noise(timings[i], timings[choice], noise_rel) and meets(i):
            choice = i
    if choice is None:
        raise ValueError("no option meets the target")
    return choice, timings


def _estimate(point: ParetoPoint) -> float:
    return point.latency_ms if point.latency_ms is not None else float("inf")


def verify_selection(
    curve: ParetoCurve,
    selection: Selection,
    homogeneous: Sequence[ParetoPoint],
    measure: Callable[[Plan], Timing],
    meets: Callable[[Plan], bool],
) -> tuple[ParetoCurve, Selection]:
    """Rule 4: the curve with measured latencies and the selection of the measured choice."""
    before = sorted(range(selection.index), key=lambda i: (_estimate(curve[i]), i))[: VERIFIED - 1]
    indices = [selection.index, *before]
    on_curve = {p.plan for p in curve}
    extra = [p for p in homogeneous if p.plan not in on_curve]
    options = [curve[i] for i in indices] + extra
    asked = set()

    def meets_option(k: int) -> bool:
        asked.add(k)
        return k == 0 or meets(options[k].plan)

    choice, timings = fastest_measured(options, lambda k: measure(options[k].plan), meets_option)
    points = list(curve)
    for k, timing in timings.items():
        if k < len(indices):
            points[indices[k]] = replace(points[indices[k]], measured_latency_ms=timing.median_ms)
    if choice < len(indices):
        index = indices[choice]
    else:
        points.append(replace(options[choice], measured_latency_ms=timings[choice].median_ms))
        index = len(points) - 1
    evaluations = selection.evaluations + len(asked - {0})
    return tuple(points), replace(selection, point=points[index], index=index, evaluations=evaluations)


def verify_budget(
    curve: ParetoCurve, selection: Selection, budget_ms: float, measure: Callable[[Plan], Timing]
) -> tuple[ParetoCurve, Selection]:
    """Rule 5: the curve with measured latencies and the first measured point within the budget."""
    points = list(curve)
    index = selection.index
    for index in range(selection.index, min(selection.index + VERIFIED, len(curve))):
        timing = measure(curve[index].plan)
        points[index] = replace(points[index], measured_latency_ms=timing.median_ms)
        if not beyond_noise(Timing(budget_ms, 0.0), timing):
            break
    return tuple(points), replace(selection, point=points[index], index=index)


def check_selection(
    curve: ParetoCurve,
    selection: Selection,
    *,
    measure: Callable[[Plan], Timing],
    meets: Callable[[Plan], bool] | None,
    budget_ms: float | None,
    homogeneous: Callable[[], Sequence[ParetoPoint]],
) -> tuple[ParetoCurve, Selection]:
    """Rule 6: the curve with measured latencies and the selection after the check."""
    priced = all(p.latency_ms is not None for p in curve)
    if meets is not None and priced:
        return verify_selection(curve, selection, homogeneous(), measure, meets)
    if budget_ms is not None and priced:
        return verify_budget(curve, selection, budget_ms, measure)
    point = replace(selection.point, measured_latency_ms=measure(selection.point.plan).median_ms)
    return tuple(point if i == selection.index else p for i, p in enumerate(curve)), replace(selection, point=point)
