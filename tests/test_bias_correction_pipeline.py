"""Bias correction through the pipeline on the shipped digits CNN: stitching and the export.

Each (weight, bits) gets its corrected bias once; phase 1 measures every candidate with it,
every configuration carries exactly the corrected biases of its own weight widths (the
original bias at the other widths), and `model.adarounded.onnx` + encodings rebuild the
QDQ model through `onnxmp apply`.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import onnxmp
from onnxmp import apply, calib_data, steps
from onnxmp.hw_profile import WeightRounding, load_profile
from onnxmp.phase1.measure import measure
from onnxmp.phase1.sensitivity import context_for, sensitivity
from onnxmp.records import Plan
from onnxmp.run_records import Settings
from onnxmp.store import ResultStore
from tests import oracles

MODELS = Path(__file__).resolve().parents[1] / "models"
DIGITS = MODELS / "digits_cnn.onnx"
DIGITS_CALIB = MODELS / "digits_calib.npz"
CORRECTED = Settings(bias_correction=True)


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    model = onnx.load(str(DIGITS))
    calib = calib_data.load_arrays(DIGITS_CALIB, model)
    calib = replace(calib, arrays={k: v[:64] for k, v in calib.arrays.items()})  # a faster fixture
    prepared = steps.prepare(model, load_profile("research"), calib)  # float biases: compared exactly
    return steps.adaround(steps.calibrate_ranges(prepared, calib, CORRECTED), CORRECTED, tmp_path_factory.mktemp("bc"))


def _biases(prepared, model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """weight -> the bias its layer reads in `model` (Conv/Gemm input 2)."""
    arrays = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    return {n.input[1]: arrays[n.input[2]].reshape(-1) for n in model.graph.node
            if n.op_type in ("Conv", "Gemm") and len(n.input) > 2 and n.input[1] in prepared.graph.constants}


def test_every_configuration_carries_the_corrected_biases_of_its_widths(calibrated):
    prepared, biases = calibrated.prepared, calibrated.biases
    assert calibrated.rounded == {} and {b for _, b in biases} == {4, 6} and len(biases) == 14  # nearest integers
    original = _biases(prepared, prepared.model)
    widths = set()
    for mixed in range(4):  # the first `mixed` weight groups at their highest candidate (W8), the rest W6 and W4
        plan = Plan({g.id: g.candidates[0 if i < mixed else -1 - i % 3] for i, g in enumerate(prepared.analysis.groups)})
        got = _biases(prepared, steps.simulate(prepared, plan, calibrated.encodings, None, biases))
        for group in prepared.analysis.groups:
            for w in group.weights:
                want = biases.get((w, plan[group.id].w_bits), original[w])
                widths.add(plan[group.id].w_bits)
                np.testing.assert_array_equal(got[w], want)
    assert max(float(np.max(np.abs(biases[(w, 4)] - original[w]))) for w in original) > 1e-3  # corrections are not 0
    assert len(widths) == 3  # W4, W6 and W8 weights all occurred


def test_phase1_measures_with_the_same_biases(calibrated, tmp_path):
    prepared = calibrated.prepared
    context = replace(context_for(prepared.model, prepared.analysis, calibrated.encodings, calibrated.calib,
                                  quantize_bias=prepared.profile.quantize_bias), biases=calibrated.biases)
    table = sensitivity(context, store=ResultStore(tmp_path / "p1.jsonl", "k"))
    group = prepared.analysis.groups[0]
    plan = Plan({group.id: group.lowest})
    corrected = measure(steps.simulate(prepared, plan, calibrated.encodings, None, calibrated.biases), calibrated.calib,
                        context.reference, batch_size=16)
    assert table.of(group.id, group.lowest) == pytest.approx(corrected.sqnr_db, abs=1e-3)
    plain = measure(steps.simulate(prepared, plan, calibrated.encodings), calibrated.calib, context.reference, batch_size=16)
    assert abs(plain.sqnr_db - corrected.sqnr_db) > 1e-3


@pytest.mark.parametrize("rounding", [WeightRounding.NEAREST, WeightRounding.ADAROUND])
def test_baked_model_and_encodings_reproduce_the_qdq_model(tmp_path, rounding):
    out = tmp_path / "run"
    with np.load(DIGITS_CALIB) as data:
        calib, feeds = {"image": data["image"][:48]}, {"image": data["image"][200:232]}
    settings = replace(CORRECTED, weight_rounding=rounding)
    onnxmp.quantize(DIGITS, profile="npu", calib=calib, output_dir=out, bits="W4A8", settings=settings)
    applied, unknown = apply.apply_encodings(out / "model.adarounded.onnx", out / "encodings.json", tmp_path / "applied")
    assert unknown == ()
    ours, theirs = onnx.load(str(out / "model.qdq.onnx")), onnx.load(str(applied))
    np.testing.assert_array_equal(oracles.run(ours, feeds)["logits"], oracles.run(theirs, feeds)["logits"])
    baked = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(out / "model.adarounded.onnx")).graph.initializer}
    given = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(DIGITS)).graph.initializer}
    changed = [n for n in given if n in baked and given[n].ndim == 1 and not np.array_equal(given[n], baked[n])]
    assert len(changed) >= 3  # corrected biases travel in the baked model (under the user's names)


def test_report_overlays_the_plain_run_from_the_same_store(tmp_path):
    with np.load(DIGITS_CALIB) as data:
        calib = {"image": data["image"][:48]}
    plain = onnxmp.quantize(DIGITS, profile="npu", calib=calib, output_dir=tmp_path, target_bops=0.3, settings=Settings())
    assert "nearest rounding" not in (tmp_path / "report.html").read_text()  # nothing to overlay yet
    corrected = onnxmp.quantize(DIGITS, profile="npu", calib=calib, output_dir=tmp_path, target_bops=0.3, settings=CORRECTED)
    assert corrected.sensitivity != plain.sensitivity  # its own phase 1, under its own store key
    page = (tmp_path / "report.html").read_text()
    assert page.count("nearest rounding") == 2  # a legend entry on the sensitivity bars and one on the curve


def test_cli_flags_and_the_store_key(tmp_path, calibrated):
    from click.testing import CliRunner

    from onnxmp.cli import main

    args = ["quantize", str(DIGITS), "--profile", "npu", "--calib", str(DIGITS_CALIB), "--num-calib", "32", "--bits", "W4A8"]
    ran = CliRunner().invoke(main, [*args, "-o", str(tmp_path / "bc"), "--bias-correction", "--output-aware-range"])
    assert ran.exit_code == 0, ran.output
    assert (tmp_path / "bc" / "model.adarounded.onnx").exists() and (tmp_path / "bc" / "adaround.jsonl").exists()
    keys = {steps.adaround_key(calibrated.prepared, s) for s in (
        Settings(), CORRECTED, Settings(output_range=True), replace(CORRECTED, output_range=True),
        Settings(weight_rounding=WeightRounding.ADAROUND), replace(CORRECTED, weight_rounding=WeightRounding.ADAROUND))}
    assert len(keys) == 6  # each phase-1 store keeps its own results
