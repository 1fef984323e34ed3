"""Curves and measured plans in the store: round trip, latest curve per label, one measurement per plan."""

from __future__ import annotations

import math

import pytest

from onnxmp import curves
from onnxmp.records import Candidate, ParetoPoint, Plan, SensitivityTable
from onnxmp.store import ResultStore

W8A8, W4A8 = Candidate(8, 8), Candidate(4, 8)


def test_a_curve_round_trips_with_infinite_and_missing_numbers(tmp_path):
    store = ResultStore(tmp_path / "s.jsonl", "k")
    curve = (
        ParetoPoint(0.5, math.inf, Plan({"a": W8A8}), measured_sqnr_db=40.0, accuracy=97.5),
        ParetoPoint(0.25, math.nan, Plan({"a": W4A8})),
    )
    curves.save_curve(store, "greedy", curve)
    (back,) = curves.stored_curves(store).values()
    assert back[0] == curve[0]
    assert math.isnan(back[1].predicted_sqnr_db) and back[1].plan == curve[1].plan and back[1].measured_sqnr_db is None


def test_the_latest_curve_of_a_label_wins_and_other_keys_are_ignored(tmp_path):
    store = ResultStore(tmp_path / "s.jsonl", "k")
    old, new = (ParetoPoint(1.0, 1.0, Plan({"a": W8A8})),), (ParetoPoint(0.5, 2.0, Plan({"a": W4A8})),)
    curves.save_curve(store, "mixquant", old)
    curves.save_curve(store, "greedy", old)
    curves.save_curve(store, "mixquant", new)
    curves.save_curve(ResultStore(store.path, "another model"), "adaqat", new)
    assert curves.stored_curves(store) == {"greedy": old, "mixquant": new}


def test_each_plan_is_measured_once_even_across_runs(tmp_path):
    store = ResultStore(tmp_path / "s.jsonl", "k")
    calls = []

    def measure(plan):
        calls.append(plan)
        return 30.0 if plan["a"] == W8A8 else math.inf

    first = curves.stored_measure(store, measure)
    assert [first(Plan({"a": W8A8})), first(Plan({"a": W8A8})), first(Plan({"a": W4A8}))] == [30.0, 30.0, math.inf]
    second = curves.stored_measure(store, measure)  # a rerun reads the store
    assert second(Plan({"a": W4A8})) == math.inf and second(Plan({"a": W8A8})) == 30.0
    assert calls == [Plan({"a": W8A8}), Plan({"a": W4A8})]


def test_a_point_stored_without_prediction_gets_one_from_a_table(tmp_path):
    # noise ratios 1e-2 (20 dB) and 1e-3 (30 dB) add to 0.011: -10 log10(0.011) = 19.586 dB
    store = ResultStore(tmp_path / "s.jsonl", "k")
    plan = Plan({"a": W4A8, "b": W8A8})
    curves.save_curve(store, "mixquant", (ParetoPoint(0.4, math.nan, plan),))
    table = SensitivityTable({("a", W4A8): 20.0, ("b", W8A8): 30.0})
    (point,) = curves.stored_curves(store, table)["mixquant"]
    assert point.predicted_sqnr_db == pytest.approx(19.586073148417746)
