"""Latency as the budget, end to end on the shipped digits CNN with a memory-bound systolic profile."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

import onnxmp
from onnxmp.errors import BudgetError
from onnxmp.latency_spec import CostAxis
from onnxmp.records import SelectionMethod, Strategy
from onnxmp.run_records import Settings

REPO = Path(__file__).resolve().parents[1]
DIGITS, DIGITS_CALIB = REPO / "models" / "digits_cnn.onnx", REPO / "models" / "digits_calib.npz"
# A 4x4 array with a quarter of a 16-bit word per cycle: the digits layers are memory-bound,
# so narrower operands are faster.
PROFILE = """name: tiny-systolic
kernels: [W8A16, W8A8, W4A8, W4A4]
ops:
  quantized: [Conv, Gemm, MatMul, Add, Concat, GlobalAveragePool, AveragePool]
  passthrough: [Reshape, Flatten, Relu, Clip, MaxPool]
latency: {model: systolic, rows: 4, cols: 4, dataflow: os, ifmap_sram_kb: 1, filter_sram_kb: 1,
          ofmap_sram_kb: 1, bandwidth_words: 0.25, word_bits: 16, clock_ghz: 1}
"""


@pytest.fixture(scope="module")
def profile(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("profile") / "tiny.yaml"
    path.write_text(PROFILE)
    return path


@pytest.fixture(scope="module")
def latency_run(profile, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("latency")
    first = onnxmp.quantize(DIGITS, profile=profile, calib=DIGITS_CALIB, output_dir=output_dir, target_bops=1.0)
    target = (first.curve[0].latency_ms + first.curve[-1].latency_ms) / 2
    result = onnxmp.quantize(DIGITS, profile=profile, calib=DIGITS_CALIB, output_dir=output_dir, target_latency_ms=target)
    return result, target, output_dir


def test_target_latency_picks_the_first_point_within_it(latency_run):
    result, target, output_dir = latency_run
    times = [p.latency_ms for p in result.curve]
    assert all(a > b for a, b in zip(times, times[1:], strict=False))  # latency falls along the curve
    assert result.selection.index > 0 and len(times) > 3
    assert result.point.latency_ms <= target < times[result.selection.index - 1]
    with open(output_dir / "pareto.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["latency_ms"]) for r in rows] == pytest.approx(times, abs=1e-6)
    assert all(r["bops_rel"] for r in rows)


def test_amed_meets_the_budget_and_repeats_for_a_seed(latency_run, profile, tmp_path):
    _, target, _ = latency_run
    settings = Settings(strategy=Strategy.AMED, amed_samples=300, seed=1)
    runs = [
        onnxmp.quantize(DIGITS, profile=profile, calib=DIGITS_CALIB, output_dir=tmp_path / str(i),
                        target_latency_ms=target, settings=settings)
        for i in range(2)
    ]
    assert runs[0].point.latency_ms <= target
    assert runs[0].plan == runs[1].plan and runs[0].selection.method is SelectionMethod.MEASURED_BEST
    assert runs[0].point.measured_sqnr_db == max(p.measured_sqnr_db for p in runs[0].curve)


def test_min_sqnr_on_the_latency_axis(profile, tmp_path):
    settings = Settings(cost=CostAxis.LATENCY)
    result = onnxmp.quantize(DIGITS, profile=profile, calib=DIGITS_CALIB, output_dir=tmp_path, min_sqnr_db=20.0, settings=settings)
    assert result.point.measured_sqnr_db >= 20.0 and result.point.latency_ms is not None


def test_latency_budget_needs_a_latency_model(tmp_path):
    with pytest.raises(BudgetError, match="needs a profile with a latency model"):
        onnxmp.quantize(DIGITS, profile="npu", calib=DIGITS_CALIB, output_dir=tmp_path, target_latency_ms=1.0)


def test_cli_target_latency_and_strategy_amed(latency_run, profile, tmp_path):
    from click.testing import CliRunner

    from onnxmp.cli import main

    _, target, _ = latency_run
    args = ["quantize", str(DIGITS), "--profile", str(profile), "--calib", str(DIGITS_CALIB), "-o", str(tmp_path)]
    result = CliRunner().invoke(main, [*args, "--target-latency", f"{target}", "--strategy", "amed", "--amed-samples", "200"])
    assert result.exit_code == 0, result.output
    shown = float(next(line for line in result.output.splitlines() if line.startswith("latency")).split()[1])
    assert shown <= target
    both = CliRunner().invoke(main, [*args, "--target-latency", "1", "--target-bops", "0.5"])
    assert both.exit_code == 2
    assert "give exactly one of --bits, --target-bops, --min-sqnr, --max-drop, --target-latency" in both.output


ORT_PROFILE = """name: tiny-ort
kernels: [float, W8A16, W8A8]
ops:
  quantized: [Conv, Gemm, MatMul, Add, Concat, GlobalAveragePool, AveragePool]
  passthrough: [Reshape, Flatten, Relu, Clip, MaxPool]
latency: {model: ort, threads: 1, runs: 3, warmups: 1}
"""


def test_ort_profile_offers_float_and_checks_the_estimate_by_measurement(tmp_path):
    import json

    from click.testing import CliRunner

    from onnxmp.cli import main
    from onnxmp.float_candidate import FLOAT
    from onnxmp.phase1.ort_model import STORE_KIND

    profile = tmp_path / "ort.yaml"
    profile.write_text(ORT_PROFILE)
    args = ["quantize", str(DIGITS), "--profile", str(profile), "--calib", str(DIGITS_CALIB), "-o", str(tmp_path / "out"),
            "--cost", "latency", "--min-sqnr", "20"]
    for _ in range(2):  # the second run reads the group timings and the border fit back
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, result.output
    assert "measured latency" in result.output and "estimate error" in result.output
    plan = json.loads((tmp_path / "out" / "plan.json").read_text())
    assert plan["measured_latency_ms"] > 0 and plan["latency_estimate_error_pct"] is not None
    with open(tmp_path / "out" / "pareto.csv", newline="") as f:
        first = next(csv.DictReader(f))
    assert float(first["predicted_sqnr_db"]) == float("inf")  # the curve starts with every group float
    lines = [json.loads(line) for line in (tmp_path / "out" / "phase1.jsonl").read_text().splitlines()]
    stored = [entry for entry in lines if entry.get("kind") == STORE_KIND]
    assert len(stored) == 1 and any(c == str(FLOAT) for _, c, _ in stored[0]["group_ms"])
