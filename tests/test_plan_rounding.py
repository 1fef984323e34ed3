"""AdaRound of the chosen plan on its own network (onnxmp.plan_rounding), on the shipped digits CNN.

The search's integers are rounded on the float network's inputs; the chosen plan's are then
rounded again, each layer on the inputs the plan's quantized network gives it. Where the plan's
prefix equals the homogeneous W4A8 network's (the first layer), the integers equal the
homogeneous run's; after W8A16 layers they differ.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import onnxmp
from onnxmp import apply, plan_rounding, steps
from onnxmp.hw_profile import WeightRounding
from onnxmp.records import Candidate, ParetoPoint, Plan, Selection, SelectionMethod
from onnxmp.run_records import Decision, Settings

MODELS = Path(__file__).resolve().parents[1] / "models"
DIGITS, DIGITS_CALIB = MODELS / "digits_cnn.onnx", MODELS / "digits_calib.npz"
ADAROUND = Settings(weight_rounding=WeightRounding.ADAROUND)
W4A8, W8A16 = Candidate(4, 8), Candidate(8, 16)


@pytest.fixture
def searched(digits_adarounded):
    """The digits CNN on npu, AdaRounded as a search rounds it (float-network inputs)."""
    return digits_adarounded


def _ends_at_4_bits(prepared) -> Plan:
    """stem and fc2 at W4A8, every group between them at its highest candidate (W8A16, A16)."""
    groups = prepared.analysis.groups
    return Plan({g.id: W4A8 if g.id in ("stem/conv", "fc2/gemm") else g.highest for g in groups})


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines())


def test_plan_weights_pairs_each_weight_with_its_groups_width(searched):
    pairs = plan_rounding.plan_weights(searched.prepared, _ends_at_4_bits(searched.prepared))
    assert pairs == {
        ("stem.conv.weight_bnfold", 4), ("branch_a.conv.weight", 8), ("branch_b.conv.weight", 8),
        ("proj.conv.weight_bnfold", 8), ("dw.conv.weight", 8), ("fc1.weight", 8), ("fc2.weight", 4),
    }  # concat has no weight


def test_the_plan_is_rounded_on_its_own_network(searched, tmp_path):
    prepared = searched.prepared
    plan = _ends_at_4_bits(prepared)
    refined = plan_rounding.round_plan(searched, plan, ADAROUND, tmp_path)
    homogeneous = steps.adaround(searched, ADAROUND, tmp_path / "w4a8", options=steps.ADAROUND_HOMOGENEOUS)
    stem, fc2 = ("stem.conv.weight_bnfold", 4), ("fc2.weight", 4)
    # the stem sees the same A8 image in both networks; fc2 sees W8A16 layers here, W4A8 ones there
    np.testing.assert_array_equal(refined.rounded[stem], homogeneous.rounded[stem])
    assert np.any(refined.rounded[fc2] != homogeneous.rounded[fc2])
    assert np.any(refined.rounded[stem] != searched.rounded[stem])  # the search rounded on float inputs
    untouched = set(searched.rounded) - {stem, fc2}
    assert untouched and all(refined.rounded[k] is searched.rounded[k] for k in untouched)
    assert steps.measured_sqnr(refined, plan, 16) > steps.measured_sqnr(searched, plan, 16)


def test_plan_results_are_cached_per_network(searched, tmp_path):
    prepared = searched.prepared
    store = tmp_path / steps.ADAROUND_STORE
    first = plan_rounding.round_plan(searched, _ends_at_4_bits(prepared), ADAROUND, tmp_path)
    assert _lines(store) == 2
    again = plan_rounding.round_plan(searched, _ends_at_4_bits(prepared), ADAROUND, tmp_path)
    assert _lines(store) == 2 and all(np.array_equal(first.rounded[k], again.rounded[k]) for k in first.rounded)
    other = Plan({**_ends_at_4_bits(prepared), "proj/conv": W4A8})  # the same stem inputs, another network
    plan_rounding.round_plan(searched, other, ADAROUND, tmp_path)
    assert _lines(store) == 2 + 3  # stem, proj and fc2 again: ids name the network


def _decision(plan: Plan, measured: float) -> Decision:
    point = ParetoPoint(0.3, 10.0, plan, measured_sqnr_db=measured)
    return Decision(plan, point, (point,), Selection(point, 0, 1, SelectionMethod.BOPS))


@pytest.mark.parametrize("stitched, kept", [(-math.inf, True), (math.inf, False)])
def test_refine_writes_the_better_weights(searched, tmp_path, stitched, kept):
    plan = _ends_at_4_bits(searched.prepared)
    calibrated, decision = plan_rounding.refine(searched, _decision(plan, stitched), ADAROUND, tmp_path)
    assert decision.refined_sqnr_db is not None and math.isfinite(decision.refined_sqnr_db)
    assert "refine_s" in decision.timings
    assert (calibrated is searched) is not kept


@pytest.mark.parametrize("why", ["homogeneous", "nearest", "off"])
def test_refine_leaves_runs_it_does_not_apply_to(searched, tmp_path, why):
    plan = _ends_at_4_bits(searched.prepared)
    decision = _decision(plan, 5.0)
    settings = ADAROUND
    if why == "homogeneous":
        decision = replace(decision, selection=None)
    elif why == "nearest":
        settings = Settings(weight_rounding=WeightRounding.NEAREST)
    else:
        settings = replace(ADAROUND, refine_rounding=False)
    assert plan_rounding.refine(searched, decision, settings, tmp_path) == (searched, decision)
    assert not (tmp_path / steps.ADAROUND_STORE).exists()


def _integers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer if i.name.endswith("_quantized")}


def test_a_search_writes_the_refined_weights_and_reports_both_sqnrs(tmp_path):
    runs = {}
    for name, settings in (("refined", ADAROUND), ("stitched", replace(ADAROUND, refine_rounding=False))):
        onnxmp.quantize(DIGITS, profile="npu", calib=DIGITS_CALIB, output_dir=tmp_path / name, target_bops=0.3, settings=settings)
        plan = json.loads((tmp_path / name / "plan.json").read_text())
        runs[name] = plan, (tmp_path / name / "report.md").read_text(), _integers(onnx.load(str(tmp_path / name / "model.qdq.onnx")))
    (plan, report, refined), (plan_off, report_off, stitched) = runs["refined"], runs["stitched"]
    assert plan["groups"] == plan_off["groups"] and plan["measured_sqnr_db"] == plan_off["measured_sqnr_db"]
    assert plan_off["refined_sqnr_db"] is None and "own network" not in report_off
    assert plan["refined_sqnr_db"] is not None and "AdaRound on the chosen plan's own network" in report
    better = plan["refined_sqnr_db"] > plan["measured_sqnr_db"]
    assert ("written: the re-rounded weights" in report) is better
    assert better is any(not np.array_equal(refined[k], stitched[k]) for k in refined)
    assert abs(plan["deployed_sqnr_db"] - (plan["refined_sqnr_db"] if better else plan["measured_sqnr_db"])) < 0.5
    # the AIMET-style export carries the written weights: model.adarounded.onnx + encodings.json rebuild them
    out = tmp_path / "refined"
    applied, unknown = apply.apply_encodings(out / "model.adarounded.onnx", out / "encodings.json", tmp_path / "applied")
    rebuilt = sorted(a.tobytes() for a in _integers(onnx.load(str(applied))).values())
    assert unknown == () and rebuilt == sorted(a.tobytes() for a in refined.values())


def test_the_cli_prints_the_plan_rounded_sqnr_unless_told_not_to_round(tmp_path):
    from click.testing import CliRunner

    from onnxmp.cli import main

    args = ["quantize", str(DIGITS), "--profile", "npu", "--calib", str(DIGITS_CALIB), "--target-bops", "0.3",
            "--weight-rounding", "adaround", "-o"]
    default = CliRunner().invoke(main, [*args, str(tmp_path / "default")])
    skipped = CliRunner().invoke(main, [*args, str(tmp_path / "skipped"), "--no-refine-rounding"])
    assert default.exit_code == 0 and skipped.exit_code == 0, default.output + skipped.output
    assert "plan-rounded SQNR" in default.output and "plan-rounded SQNR" not in skipped.output
    assert "against the simulation" in default.output
