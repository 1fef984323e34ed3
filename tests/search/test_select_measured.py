"""select_measured: the measured check of a selection, on literal timings (no clock)."""

from __future__ import annotations

import pytest

from onnxmp.phase1.ort_latency import Timing
from onnxmp.records import Candidate, ParetoPoint, Plan, Selection, SelectionMethod
from onnxmp.search.select_measured import (
    beyond_noise,
    fastest_measured,
    verify_budget,
    verify_selection,
)

W8A8 = Candidate(8, 8)


def _point(name: str, estimate: float) -> ParetoPoint:
    return ParetoPoint(1.0, 30.0, Plan({name: W8A8}), latency_ms=estimate)


def test_noise_margin_is_three_percent_or_the_larger_iqr():
    assert beyond_noise(Timing(1.0, 0.0), Timing(1.031, 0.0))  # 3.1 % > 3 % of 1.0
    assert not beyond_noise(Timing(1.0, 0.0), Timing(1.029, 0.0))
    assert not beyond_noise(Timing(1.0, 0.0), Timing(1.2, 0.25))  # within the slower one's IQR


def test_fastest_measured_keeps_the_estimates_order_within_noise():
    # selected (estimate 2.0, measured 2.0); option 1 estimated 1.5 but measured 2.02;
    # option 2 estimated 1.8, measured 1.5. Visit order 1, 2, 0: 1 first, 2 replaces it (faster
    # by more than 3 %), 0 is within noise of nothing faster. meets is asked for 1 and 2 only.
    options = [_point("s", 2.0), _point("a", 1.5), _point("b", 1.8)]
    timings = [Timing(2.0, 0.01), Timing(2.02, 0.01), Timing(1.5, 0.01)]
    asked = []

    def meets(i: int) -> bool:
        asked.append(i)
        return True

    choice, measured = fastest_measured(options, lambda i: timings[i], meets)
    assert (choice, asked, sorted(measured)) == (2, [1, 2], [0, 1, 2])
    # option 2 misses the target: option 1 stays, although the selected one measured 1 % faster
    choice, _ = fastest_measured(options, lambda i: timings[i], lambda i: i != 2)
    assert choice == 1


def test_verify_selection_appends_a_faster_homogeneous_point():
    curve = tuple(_point(name, ms) for name, ms in [("p0", 3.0), ("p1", 2.5), ("p2", 2.0), ("p3", 1.0)])
    selection = Selection(curve[2], 2, 4, SelectionMethod.HYBRID)
    w8a8 = ParetoPoint(0.5, 25.0, Plan({"all": W8A8}), latency_ms=2.2)
    measured = {"p0": 3.1, "p1": 2.6, "p2": 2.9, "all": 1.3}
    checked = []

    def meets(plan: Plan) -> bool:
        checked.append(next(iter(plan)))
        return True

    curve2, chosen = verify_selection(curve, selection, [w8a8], lambda plan: Timing(measured[next(iter(plan))], 0.0), meets)
    # options: p2 (selected), p1 and p0 (the cheapest-estimated before it), all-W8A8; visited by
    # estimate: p2 (2.0), all (2.2), p1, p0. all-W8A8 is 55 % faster and meets: chosen, appended.
    assert (chosen.index, chosen.point.plan, chosen.method, chosen.evaluations) == (4, w8a8.plan, SelectionMethod.HYBRID, 5)
    assert [p.measured_latency_ms for p in curve2] == [3.1, 2.6, 2.9, None, 1.3]
    assert checked == ["all"] and curve2[4].latency_ms == 2.2


def test_verify_budget_walks_on_to_the_first_point_measured_within_it():
    curve = tuple(_point(name, ms) for name, ms in [("p0", 3.0), ("p1", 2.0), ("p2", 1.9), ("p3", 1.8)])
    measured = {"p1": 2.4, "p2": 2.05, "p3": 1.5}
    selection = Selection(curve[1], 1, 0, SelectionMethod.LATENCY)
    curve2, chosen = verify_budget(curve, selection, 2.0, lambda plan: Timing(measured[next(iter(plan))], 0.0))
    # p1 measured 2.4 is over 2.0 by more than 3 %; p2 at 2.05 is within the noise: kept
    assert chosen.index == 2 and [p.measured_latency_ms for p in curve2] == [None, 2.4, 2.05, None]


def test_no_option_meeting_the_target_is_a_caller_bug():
    with pytest.raises(ValueError, match="no option meets"):
        fastest_measured([_point("s", 1.0)], lambda i: Timing(1.0, 0.0), lambda i: False)
