"""End to end through `onnxmp.quantize` on the shipped digits CNN, into tmp_path."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

import onnxmp
from onnxmp import run_records, run_store, runtime
from onnxmp.curves import CURVE_KIND
from onnxmp.errors import BudgetError
from onnxmp.phase1.sensitivity import STORE_KIND
from onnxmp.records import Candidate, SelectionMethod
from onnxmp.search.greedy import predicted_sqnr_db
from tests import oracles

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"
DIGITS = MODELS / "digits_cnn.onnx"
DIGITS_CALIB = MODELS / "digits_calib.npz"
DIGITS_EVAL = MODELS / "digits_eval.npz"
GROUP_IDS = ["stem/conv", "branch_a/conv", "concat", "proj/conv", "dw/conv", "fc1/gemm", "fc2/gemm"]


def _quantize(output_dir: Path, **budget) -> run_records.Result:
    return onnxmp.quantize(DIGITS, profile="npu", calib=DIGITS_CALIB, output_dir=output_dir, **budget)


@pytest.fixture(scope="module")
def bops_run(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("bops")
    return _quantize(output_dir, target_bops=0.3), output_dir


def _calib_images() -> np.ndarray:
    with np.load(DIGITS_CALIB) as data:
        return data["image"]


def _top1(model: onnx.ModelProto) -> float:
    """Top-1 accuracy (%) on the 500 held-out digits."""
    with np.load(DIGITS_EVAL) as data:
        images, labels = data["image"], data["label"]
    logits = oracles.run(model, {"image": images})["logits"]
    return 100.0 * float(np.mean(logits.argmax(axis=1) == labels))


def _store_lines(output_dir: Path, kind: str = STORE_KIND) -> int:
    """Entries of one kind in the store (phase-1 results by default; each run also stores its curve)."""
    lines = (output_dir / run_store.STORE_NAME).read_text().splitlines()
    return sum(json.loads(line)["kind"] == kind for line in lines)


def test_target_bops_returns_the_chosen_point_and_the_curve(bops_run):
    result, output_dir = bops_run
    curve = result.curve
    assert list(curve[0].plan) == GROUP_IDS
    assert curve[0].bops_rel == 1.0
    assert all(later.bops_rel < earlier.bops_rel for earlier, later in zip(curve, curve[1:], strict=False))
    index = result.selection.index
    assert result.point.plan == result.plan
    assert result.point.bops_rel <= 0.3
    assert curve[index - 1].bops_rel > 0.3  # at or just below the budget
    assert result.point == curve[index]
    assert result.point.predicted_sqnr_db == pytest.approx(
        predicted_sqnr_db(result.plan, result.sensitivity), abs=1e-12
    )
    assert math.isfinite(result.point.measured_sqnr_db)
    assert [p.measured_sqnr_db is not None for p in curve].count(True) == 1  # only the chosen point
    assert result.paths["model"] == output_dir / "model.qdq.onnx"
    for name in ("model", "plan", "pareto", "report", "sensitivity"):
        assert result.paths[name].is_file(), name
        assert result.paths[name].parent == output_dir


def test_the_qdq_model_is_valid_and_runs(bops_run):
    result, output_dir = bops_run
    qdq = onnx.load(str(output_dir / "model.qdq.onnx"))
    onnx.checker.check_model(qdq, full_check=True)
    ops = {n.op_type for n in qdq.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    images = _calib_images()
    got = oracles.run(qdq, {"image": images})["logits"]
    want = oracles.run(onnx.load(str(DIGITS)), {"image": images})["logits"]
    assert got.shape == want.shape == (256, 10)
    assert np.isfinite(got).all()
    # what ships is what was measured: integer weights give the fake-quantized SQNR
    assert oracles.sqnr_db(want, got) == pytest.approx(result.point.measured_sqnr_db, abs=0.05)
    # and it also loads with ONNX Runtime's integer QDQ fusions on
    sess = runtime.session(qdq, simulate=False)
    assert sess.run(None, {"image": images[:4]})[0].shape == (4, 10)


def test_plan_pareto_and_sensitivity_files_parse(bops_run):
    result, output_dir = bops_run
    plan = json.loads((output_dir / "plan.json").read_text())
    assert plan["profile"] == "npu"
    assert [g["id"] for g in plan["groups"]] == GROUP_IDS
    assert {g["id"]: g["candidate"] for g in plan["groups"]} == {k: str(v) for k, v in result.plan.items()}
    assert plan["bops_rel"] == pytest.approx(result.point.bops_rel, abs=1e-6)
    assert plan["measured_sqnr_db"] == pytest.approx(result.point.measured_sqnr_db, abs=1e-6)

    with open(output_dir / "pareto.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(result.curve)
    assert [int(r["index"]) for r in rows] == list(range(len(result.curve)))
    assert [float(r["bops_rel"]) for r in rows] == pytest.approx([p.bops_rel for p in result.curve], abs=1e-6)
    assert [r["moved_group"] for r in rows][0] == ""
    assert all(r["moved_group"] in GROUP_IDS for r in rows[1:])

    sensitivity = json.loads((output_dir / "sensitivity.json").read_text())
    assert list(sensitivity) == GROUP_IDS
    for (group_id, candidate), value in result.sensitivity.sqnr_db.items():
        written = sensitivity[group_id][str(candidate)]
        assert written == "inf" if value == math.inf else written == pytest.approx(value, abs=1e-6)


def test_same_inputs_give_identical_files(bops_run, tmp_path):
    first_dir = bops_run[1]
    second = _quantize(tmp_path, target_bops=0.3)
    assert second.plan == bops_run[0].plan
    for name in ("model.qdq.onnx", "plan.json", "pareto.csv", "sensitivity.json"):
        assert (tmp_path / name).read_bytes() == (first_dir / name).read_bytes(), name


def test_the_input_model_is_never_modified(bops_run, tmp_path):
    # the file: its checksum is the one models/README.md publishes
    published = re.search(r"([0-9a-f]{64})  digits_cnn\.onnx", (MODELS / "README.md").read_text()).group(1)
    assert hashlib.sha256(DIGITS.read_bytes()).hexdigest() == published
    # a ModelProto passed in: its bytes are the same afterwards
    model = onnx.load(str(DIGITS))
    before = model.SerializeToString()
    onnxmp.quantize(model, profile="npu", calib=DIGITS_CALIB, output_dir=tmp_path, bits="W8A8")
    assert model.SerializeToString() == before


def test_bits_w8a8_is_homogeneous(tmp_path):
    result = _quantize(tmp_path, bits="W8A8")
    assert dict(result.plan) == {g: Candidate(None, 8) if g == "concat" else Candidate(8, 8) for g in GROUP_IDS}
    assert result.curve == (result.point,)
    assert result.point.bops_rel == 0.5
    assert math.isfinite(result.point.measured_sqnr_db) and result.point.measured_sqnr_db > 20
    assert result.selection is None and result.sensitivity is None
    assert (tmp_path / "model.qdq.onnx").is_file()
    assert not (tmp_path / run_store.STORE_NAME).exists()  # no phase 1 for a fixed precision


def test_min_sqnr_measures_and_meets_the_target(bops_run, tmp_path):
    shutil.copy(bops_run[1] / run_store.STORE_NAME, tmp_path / run_store.STORE_NAME)
    result = _quantize(tmp_path, min_sqnr_db=30.0)
    index = result.selection.index
    assert result.selection.method is SelectionMethod.HYBRID
    assert result.point.measured_sqnr_db >= 30.0
    assert 1 <= result.selection.evaluations < len(result.curve)
    measured = [i for i, p in enumerate(result.curve) if p.measured_sqnr_db is not None]
    assert len(measured) == result.selection.evaluations
    if index + 1 < len(result.curve):  # the search stopped at a measured miss just past the answer
        assert result.curve[index + 1].measured_sqnr_db < 30.0


def test_max_drop_with_an_evaluation_function(bops_run, tmp_path):
    shutil.copy(bops_run[1] / run_store.STORE_NAME, tmp_path / run_store.STORE_NAME)
    calls = []

    def evaluate(model: onnx.ModelProto) -> float:
        calls.append(len(model.graph.node))
        return _top1(model)

    result = _quantize(tmp_path, max_drop=1.0, evaluate=evaluate)
    assert result.float_score == pytest.approx(99.8)  # 499 / 500, models/README.md
    assert result.point.accuracy >= 99.8 - 1.0
    assert len(calls) == 1 + result.selection.evaluations  # the float model, then the searched points
    assert result.point.bops_rel < 1.0
    scored = [p.accuracy for p in result.curve if p.accuracy is not None]
    assert len(scored) == result.selection.evaluations
    # the shipped model scores what the search measured, within one image
    assert _top1(onnx.load(str(tmp_path / "model.qdq.onnx"))) == pytest.approx(result.point.accuracy, abs=0.2)


@pytest.mark.parametrize(
    ("budget", "words"),
    [
        ({"target_bops": 0.01}, ["target BOPs 0.01", "achievable: 0.2500 to 1.0000"]),
        ({"min_sqnr_db": 200.0}, ["SQNR (dB) target 200", "not met even by the highest", "1.0000"]),
    ],
)
def test_impossible_budgets_name_the_range(bops_run, tmp_path, budget, words):
    shutil.copy(bops_run[1] / run_store.STORE_NAME, tmp_path / run_store.STORE_NAME)
    with pytest.raises(BudgetError) as info:
        _quantize(tmp_path, **budget)
    for word in words:
        assert word in str(info.value)
    assert not (tmp_path / "model.qdq.onnx").exists()


@pytest.mark.parametrize(
    ("budget", "words"),
    [
        ({}, "give exactly one budget"),
        ({"bits": "W8A8", "target_bops": 0.3}, "give exactly one budget"),
        ({"max_drop": 1.0}, "max_drop needs an evaluation"),
        ({"bits": "W3A8"}, "W3A8 is not a kernel of profile npu"),
        ({"bits": "eight"}, "bits: "),
    ],
)
def test_bad_budgets_are_budget_errors(tmp_path, budget, words):
    with pytest.raises(BudgetError) as info:
        _quantize(tmp_path, **budget)
    assert words in str(info.value)
    assert not (tmp_path / "model.qdq.onnx").exists()


def test_require_stored_on_a_fresh_directory_fails(tmp_path):
    with pytest.raises(BudgetError) as info:
        _quantize(tmp_path, target_bops=0.3, require_stored=True)
    assert "phase 1 is incomplete (20 evaluations missing)" in str(info.value)
    assert str(tmp_path / run_store.STORE_NAME) in str(info.value)
    assert not (tmp_path / "model.qdq.onnx").exists()


def test_require_stored_after_a_full_run_serves_a_new_budget_from_the_store(bops_run, tmp_path):
    shutil.copy(bops_run[1] / run_store.STORE_NAME, tmp_path / run_store.STORE_NAME)
    lines = _store_lines(tmp_path)
    assert lines == 20  # 6 weighted groups x 3 candidates + concat x 2
    result = _quantize(tmp_path, target_bops=0.4, require_stored=True)
    assert _store_lines(tmp_path) == lines
    assert _store_lines(tmp_path, CURVE_KIND) == 2  # the first run's curve and this one's
    assert result.point.bops_rel <= 0.4
    assert [p.plan for p in result.curve] == [p.plan for p in bops_run[0].curve]
    assert result.sensitivity == bops_run[0].sensitivity
    assert result.point.bops_rel > bops_run[0].point.bops_rel
