"""MixQuant and AdaQAT through the pipeline on the shipped digits CNN, and their curves side by side."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

import onnxmp
from onnxmp import run_store
from onnxmp.curves import CURVE_KIND, PLAN_KIND
from onnxmp.errors import BudgetError
from onnxmp.phase1.sensitivity import STORE_KIND
from onnxmp.records import SelectionMethod, Strategy
from onnxmp.run_records import Settings

REPO = Path(__file__).resolve().parents[1]
DIGITS, DIGITS_CALIB = REPO / "models" / "digits_cnn.onnx", REPO / "models" / "digits_calib.npz"


def _run(output_dir: Path, settings: Settings, **budget):
    return onnxmp.quantize(DIGITS, profile="research", calib=DIGITS_CALIB, output_dir=output_dir, settings=settings, **budget)


def _kinds(output_dir: Path) -> list[str]:
    return [json.loads(line)["kind"] for line in (output_dir / run_store.STORE_NAME).read_text().splitlines()]


@pytest.fixture(scope="module")
def shared_dir(tmp_path_factory):
    """MixQuant first (no phase 1), then greedy, then AdaQAT, all in one output folder."""
    out = tmp_path_factory.mktemp("strategies")
    mixquant = _run(out, Settings(strategy=Strategy.MIXQUANT), target_bops=0.3)
    kinds_after_mixquant = _kinds(out)
    greedy = _run(out, Settings(strategy=Strategy.GREEDY), target_bops=0.3)
    adaqat = _run(out, Settings(strategy=Strategy.ADAQAT), target_bops=0.3)
    return out, mixquant, kinds_after_mixquant, greedy, adaqat


def test_mixquant_runs_without_phase_1(shared_dir):
    _, mixquant, kinds, _, _ = shared_dir
    assert kinds == [CURVE_KIND]  # no phase-1 entry, no measured plan: only its curve
    assert mixquant.sensitivity is None and mixquant.point.bops_rel <= 0.3
    assert mixquant.point.measured_sqnr_db is not None  # the chosen point is still measured


def test_every_strategy_meets_the_budget_with_kernels_of_the_profile(shared_dir):
    _, mixquant, _, greedy, adaqat = shared_dir
    profile = onnxmp.load_profile("research")
    for result in (mixquant, greedy, adaqat):
        assert result.point.bops_rel <= 0.3
        assert set(result.plan.values()) <= {*profile.kernels, *(c for c in result.plan.values() if c.w_bits is None)}


def test_pareto_csv_carries_every_strategy_of_the_store(shared_dir):
    out, mixquant, _, greedy, adaqat = shared_dir
    with open(out / "pareto.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    counts = {label: sum(r["strategy"] == label for r in rows) for label in {r["strategy"] for r in rows}}
    assert counts == {"adaqat (group, predicted)": len(adaqat.curve), "greedy": len(greedy.curve), "mixquant": len(mixquant.curve)}
    assert rows[0]["strategy"] == "adaqat (group, predicted)"  # this run's curve first
    report = (out / "report.md").read_text()
    assert "- curve mixquant:" in report and "- curve greedy:" in report


def test_a_fixed_knob_needs_no_budget_and_gives_one_point(tmp_path):
    result = _run(tmp_path, Settings(strategy=Strategy.MIXQUANT, qem=4.0))
    assert len(result.curve) == 1 and result.selection.method is SelectionMethod.FIXED
    with pytest.raises(BudgetError, match="exactly one budget"):
        _run(tmp_path, Settings(strategy=Strategy.GREEDY, qem=4.0))


def test_measured_adaqat_measures_through_the_store_and_a_rerun_measures_nothing(tmp_path):
    settings = Settings(strategy=Strategy.ADAQAT, per_network=True, measured_loss=True)
    first = _run(tmp_path, settings, target_bops=0.3)
    measured = _kinds(tmp_path).count(PLAN_KIND)
    assert measured > 0 and STORE_KIND not in _kinds(tmp_path)  # no phase 1 needed
    again = _run(tmp_path, settings, target_bops=0.3)
    assert _kinds(tmp_path).count(PLAN_KIND) == measured
    assert again.plan == first.plan and len(set(first.plan.values()) - {c for c in first.plan.values() if c.w_bits is None}) == 1
