"""Output-aware activation clipping through the pipeline on the shipped digits CNN."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner

from onnxmp import calib_data, pipeline, run_store, steps
from onnxmp.cli import main
from onnxmp.hw_profile import ActivationClipping, load_profile
from onnxmp.phase1.clip_activations import CLIP_FACTORS, MAX_BITS, STORE_KIND
from onnxmp.phase1.jobs import Phase1Result
from onnxmp.run_records import Settings
from onnxmp.store import ResultStore

MODELS = Path(__file__).resolve().parents[1] / "models"
DIGITS = MODELS / "digits_cnn.onnx"
DIGITS_CALIB = MODELS / "digits_calib.npz"
OUTPUT = Settings(activation_clipping=ActivationClipping.OUTPUT)


@pytest.fixture(scope="module")
def calibrated():
    model = onnx.load(str(DIGITS))
    calib = calib_data.load_arrays(DIGITS_CALIB, model)
    return steps.calibrate_ranges(steps.prepare(model, load_profile("npu"), calib), calib, OUTPUT)


def test_each_range_is_its_mse_range_times_the_factor_best_at_the_output(calibrated, tmp_path):
    clipped = pipeline.clip(calibrated, OUTPUT, tmp_path)
    assert clipped.encodings.keys() == calibrated.encodings.keys()
    store = tmp_path / run_store.STORE_NAME
    sqnr = {}  # (tensor, bits) -> {factor: dB}, as measured and stored by the run
    for entry in ResultStore(store, _key(store)).entries(STORE_KIND):
        result = Phase1Result.from_entry(entry)
        tensor, factor = result.group.rsplit(" x", 1)
        sqnr.setdefault((tensor, result.candidate.a_bits), {})[float(factor)] = result.noise.sqnr_db
    constants = calibrated.prepared.graph.constants
    searched = {k for k in calibrated.encodings if k[0] not in constants and k[1] <= MAX_BITS}
    assert sqnr.keys() == searched and all(len(v) == len(CLIP_FACTORS) for v in sqnr.values())
    for key, before in calibrated.encodings.items():
        after = clipped.encodings[key]
        if key not in searched:
            assert after == before
            continue
        best = max(CLIP_FACTORS, key=lambda f: (sqnr[key][f], -CLIP_FACTORS.index(f)))
        assert after.zero_point == before.zero_point
        assert after.scale == pytest.approx(tuple(s * best for s in before.scale), rel=1e-12)
    assert "clip_s" in clipped.timings


def test_tensor_clipping_is_a_no_op(calibrated, tmp_path):
    tensor = replace(OUTPUT, activation_clipping=ActivationClipping.TENSOR)
    assert pipeline.clip(calibrated, tensor, tmp_path) is calibrated
    assert not (tmp_path / run_store.STORE_NAME).exists()


def test_cli_flag_measures_once_and_a_rerun_reads_back(tmp_path):
    args = ["quantize", str(DIGITS), "--profile", "npu", "--calib", str(DIGITS_CALIB), "--bits", "W8A8",
            "-o", str(tmp_path), "--activation-clipping", "output"]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    store = tmp_path / run_store.STORE_NAME
    measured = [json.dumps(e, sort_keys=True) for e in ResultStore(store, _key(store)).entries(STORE_KIND)]
    assert measured and len(measured) % len(CLIP_FACTORS) == 0
    second = CliRunner().invoke(main, args)
    assert second.exit_code == 0, second.output
    again = [json.dumps(e, sort_keys=True) for e in ResultStore(store, _key(store)).entries(STORE_KIND)]
    assert again == measured  # nothing measured twice


def _key(store: Path) -> str:
    """The key the run wrote on the store's first line (read back, not recomputed)."""
    return json.loads(store.read_text().splitlines()[0])["key"]
