"""Point selection: by BOPs budget, and by a quality target with sequential/binary/hybrid search."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from onnxmp.errors import BudgetError
from onnxmp.records import Candidate, ParetoPoint, Plan, SelectionMethod
from onnxmp.search import SearchMethod, select_by_bops, select_by_target

METHODS = list(SearchMethod)


def _curve(bops: list[float]) -> tuple[ParetoPoint, ...]:
    return tuple(ParetoPoint(b, 40.0 - i, Plan({"g": Candidate(8, 8)})) for i, b in enumerate(bops))


def _linear_curve(n: int) -> tuple[ParetoPoint, ...]:
    return _curve([1.0 - 0.75 * i / max(n - 1, 1) for i in range(n)])


BOPS_CURVE = _curve([1.0, 0.7, 0.5, 0.3, 0.25])


@pytest.mark.parametrize(
    ("target", "index"),
    [(2.0, 0), (1.0, 0), (0.99, 1), (0.7, 1), (0.6, 2), (0.5, 2), (0.49, 3), (0.3, 3), (0.2500001, 4), (0.25, 4)],
)
def test_select_by_bops_takes_the_point_at_or_just_below(target, index):
    selection = select_by_bops(BOPS_CURVE, target)
    assert selection.index == index
    assert selection.point == BOPS_CURVE[index]
    assert selection.point.bops_rel <= target
    assert (selection.evaluations, selection.method) == (0, SelectionMethod.BOPS)


def test_select_by_bops_below_the_cheapest_names_the_range():
    with pytest.raises(BudgetError) as info:
        select_by_bops(BOPS_CURVE, 0.2)
    message = str(info.value)
    assert "0.2" in message
    assert "achievable: 0.2500 to 1.0000" in message
    assert "\n" not in message


# ---------------------------------------------------------------- quality targets

# quality of point i (higher is better), non-increasing along the curve (cheaper = worse)
SHAPES = {
    "linear": lambda i, n: 100.0 - 2.0 * i,
    "concave": lambda i, n: 100.0 - 0.1 * i * i,
    "convex": lambda i, n: 100.0 * 0.8**i,
    "plateaus": lambda i, n: 100.0 - 10.0 * (i // 3),
}


def _thresholds(qualities: list[float]) -> list[tuple[float, int]]:
    """(threshold, expected index) for every answer position: -1 (none) .. n-1 (all meet)."""
    n = len(qualities)
    cases = [(qualities[0] + 1.0, -1), (qualities[-1] - 1.0, n - 1)]
    for k in range(n - 1):
        if qualities[k] > qualities[k + 1]:
            cases.append(((qualities[k] + qualities[k + 1]) / 2, k))
    for k in range(n):  # exactly on a value: ">=" meets it
        cases.append((qualities[k], max(i for i in range(n) if qualities[i] >= qualities[k])))
    return cases


class Recorder:
    """An evaluation function of the index that counts how often each index is asked for."""

    def __init__(self, qualities: list[float]) -> None:
        self.qualities = qualities
        self.calls: Counter[int] = Counter()

    def __call__(self, index: int) -> float:
        assert 0 <= index < len(self.qualities)
        self.calls[index] += 1
        return self.qualities[index]


@pytest.mark.parametrize("n", range(1, 41))
def test_all_methods_agree_on_monotone_curves(n):
    curve = _linear_curve(n)
    for shape, quality in SHAPES.items():
        qualities = [quality(i, n) for i in range(n)]
        for threshold, expected in _thresholds(qualities):
            for method in METHODS:
                record = Recorder(qualities)
                where = (shape, threshold, method)
                if expected < 0:
                    with pytest.raises(BudgetError):
                        select_by_target(curve, record, threshold, method=method)
                else:
                    selection = select_by_target(curve, record, threshold, method=method)
                    assert selection.index == expected, where
                    assert selection.point == curve[expected]
                    assert selection.method is SelectionMethod(method.value)
                    assert selection.evaluations == len(record.calls), where
                assert set(record.calls.values()) == {1}, where  # each index at most once


@pytest.mark.parametrize("shape", ["linear", "concave"])
@pytest.mark.parametrize("n", range(1, 41))
def test_hybrid_needs_few_evaluations_on_smooth_curves(n, shape):
    curve = _linear_curve(n)
    qualities = [SHAPES[shape](i, n) for i in range(n)]
    bound = math.ceil(math.log2(n)) + 2
    for threshold, expected in _thresholds(qualities):
        if expected < 0:
            continue
        selection = select_by_target(curve, Recorder(qualities), threshold, method=SearchMethod.HYBRID)
        assert selection.index == expected
        assert selection.evaluations <= bound, (threshold, selection.evaluations, bound)


def test_binary_and_hybrid_need_fewer_evaluations_than_sequential():
    n = 40
    curve = _linear_curve(n)
    qualities = [SHAPES["linear"](i, n) for i in range(n)]
    # the answer near the expensive end: sequential walks almost the whole curve
    counts = {m: select_by_target(curve, Recorder(qualities), 95.0, method=m).evaluations for m in METHODS}
    assert counts[SearchMethod.SEQUENTIAL] == 38
    assert counts[SearchMethod.BINARY] <= 6
    assert counts[SearchMethod.HYBRID] <= 6


@pytest.mark.parametrize("method", METHODS)
def test_target_missed_by_the_highest_point_names_its_value(method):
    curve = _linear_curve(5)
    with pytest.raises(BudgetError) as info:
        select_by_target(curve, Recorder([30.5, 29.0, 28.0, 27.0, 26.0]), 31.0, method=method, what="SQNR (dB)")
    message = str(info.value)
    assert message.startswith("SQNR (dB) target 31")
    assert "measured 30.5" in message and "1.0000" in message
    assert "\n" not in message


@pytest.mark.parametrize("seed", range(20))
def test_non_monotone_curves_always_return_a_point_meeting_the_target(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 41))
    curve = _linear_curve(n)
    # a decreasing trend with dips and bumps as large as the step
    qualities = [float(v) for v in 100.0 - 2.0 * np.arange(n) + rng.normal(0.0, 3.0, n)]
    for threshold in np.quantile(qualities, [0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0]):
        meeting = [i for i in range(n) if qualities[i] >= threshold]
        for method in METHODS:
            record = Recorder(qualities)
            try:
                selection = select_by_target(curve, record, float(threshold), method=method)
            except BudgetError:
                assert qualities[0] < threshold and record.calls[0] == 1, method
                continue
            assert qualities[selection.index] >= threshold, method
            assert record.calls[selection.index] == 1  # the answer was measured
            assert set(record.calls.values()) == {1}
            if method is SearchMethod.SEQUENTIAL:
                assert selection.index == max(meeting)
