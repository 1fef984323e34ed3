"""AdaRound through the pipeline on the shipped digits CNN: stitching and the AIMET-style export.

The stitching contract (paper §3.5): each (weight, bits) is AdaRounded once; phase 1
measures every candidate with those integers, and every configuration phase 2, selection
and emit build carries exactly the integers of its own weight widths.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import onnxmp
from onnxmp import apply, quant_math, steps
from onnxmp.hw_profile import WeightRounding
from onnxmp.phase1.measure import measure
from onnxmp.phase1.sensitivity import context_for, sensitivity
from onnxmp.records import Candidate, Plan
from onnxmp.run_records import Settings
from onnxmp.store import ResultStore
from tests import oracles

MODELS = Path(__file__).resolve().parents[1] / "models"
DIGITS = MODELS / "digits_cnn.onnx"
DIGITS_CALIB = MODELS / "digits_calib.npz"
ADAROUND = Settings(weight_rounding=WeightRounding.ADAROUND)


@pytest.fixture
def calibrated(digits_adarounded):
    return digits_adarounded


def _weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}


def test_every_configuration_carries_the_rounded_integers_of_its_widths(calibrated):
    prepared, rounded = calibrated.prepared, calibrated.rounded
    weights = sorted({w for w, _ in rounded})
    assert {b for _, b in rounded} == {4} and len(weights) == 7  # W8 stays nearest (RoundingOptions.max_bits)
    nearest_differs = 0
    for mixed in range(4):  # W8 for the first `mixed` weight groups, W4 for the rest
        plan = Plan({g.id: g.candidates[0 if i < mixed else -1] for i, g in enumerate(prepared.analysis.groups)})
        model = _weights(steps.simulate(prepared, plan, calibrated.encodings, rounded))
        for group in prepared.analysis.groups:
            for w in group.weights:
                enc = calibrated.encodings[(w, plan[group.id].w_bits)]
                scale = np.asarray(enc.scale, np.float32).reshape(quant_math.broadcast_shape(model[w].ndim, enc.axis))
                nearest = quant_math.quantize(prepared.graph.constant(w), scale, 0, enc.qmin, enc.qmax)
                expected = rounded.get((w, enc.bits), nearest)
                np.testing.assert_array_equal(model[w], quant_math.dequantize(expected, scale, 0))
                nearest_differs += int(np.any(nearest != expected))
    assert nearest_differs > 0  # AdaRound changed some integers, so the check above can fail


def test_phase1_measures_with_the_same_integers(calibrated, tmp_path):
    prepared = calibrated.prepared
    context = replace(
        context_for(prepared.model, prepared.analysis, calibrated.encodings, calibrated.calib, quantize_bias=True),
        rounded=calibrated.rounded,
    )
    table = sensitivity(context, store=ResultStore(tmp_path / "p1.jsonl", "k"))
    group = prepared.analysis.groups[0]
    plan = Plan({group.id: group.lowest})
    whole = measure(steps.simulate(prepared, plan, calibrated.encodings, calibrated.rounded), calibrated.calib,
                    context.reference, batch_size=16)
    assert table.of(group.id, group.lowest) == pytest.approx(whole.sqnr_db, abs=1e-3)
    nearest = measure(steps.simulate(prepared, plan, calibrated.encodings), calibrated.calib, context.reference,
                      batch_size=16)
    assert abs(nearest.sqnr_db - whole.sqnr_db) > 1e-3


def test_adarounded_model_and_encodings_reproduce_the_qdq_model(tmp_path):
    out = tmp_path / "run"
    result = onnxmp.quantize(DIGITS, profile="npu", calib=DIGITS_CALIB, output_dir=out, bits="W4A8", settings=ADAROUND)
    assert (out / "model.adarounded.onnx").exists() and result.paths["adarounded"] == out / "model.adarounded.onnx"
    applied, unknown = apply.apply_encodings(out / "model.adarounded.onnx", out / "encodings.json", tmp_path / "applied")
    assert unknown == ()
    ours, theirs = onnx.load(str(out / "model.qdq.onnx")), onnx.load(str(applied))
    def integers(model: onnx.ModelProto) -> list[tuple]:  # names differ (user names in the baked model)
        arrays = [numpy_helper.to_array(i) for i in model.graph.initializer if i.name.endswith("_quantized")]
        return sorted((a.dtype.name, a.shape, a.tobytes()) for a in arrays)

    assert integers(ours) == integers(theirs) and len(integers(ours)) == 14  # 7 weights, 7 int32 biases
    with np.load(DIGITS_CALIB) as data:
        feeds = {"image": data["image"][:32]}
    np.testing.assert_array_equal(oracles.run(ours, feeds)["logits"], oracles.run(theirs, feeds)["logits"])
    rerun = onnxmp.quantize(DIGITS, profile="npu", calib=DIGITS_CALIB, output_dir=out, bits="W4A8", settings=ADAROUND)
    assert rerun.timings["adaround_s"] < result.timings["adaround_s"]  # read back from out/adaround.jsonl


def test_cli_weight_rounding_writes_the_adarounded_model(tmp_path):
    from click.testing import CliRunner

    from onnxmp.cli import main

    args = ["quantize", str(DIGITS), "--profile", "npu", "--calib", str(DIGITS_CALIB), "--bits", "W4A8", "-o"]
    nearest = CliRunner().invoke(main, [*args, str(tmp_path / "nearest")])
    adaround = CliRunner().invoke(main, [*args, str(tmp_path / "adaround"), "--weight-rounding", "adaround"])
    assert nearest.exit_code == 0 and adaround.exit_code == 0, adaround.output
    assert not (tmp_path / "nearest" / "model.adarounded.onnx").exists()
    assert (tmp_path / "adaround" / "model.adarounded.onnx").exists()
    assert (tmp_path / "adaround" / "adaround.jsonl").exists()


@pytest.mark.parametrize("profile, budget, inputs", [
    ("npu", {"bits": "W4A8"}, "quantized"), ("research", {"bits": "W6A6"}, "quantized"), ("npu", {"target_bops": 0.3}, "float"),
])
def test_homogeneous_runs_round_on_their_own_network_searches_on_the_float_network(profile, budget, inputs, tmp_path, monkeypatch):
    """A `--bits` run walks exactly its plan's network (research W6A6: only W6A6 ranges exist, so
    the widest W6 network, W6A8, could not be built); a search rounds on the float network."""
    from onnxmp import pipeline

    seen = []

    def recording(calibrated, settings, output_dir, *, options, progress=None, plan=None):
        seen.append((options.inputs.value, None if plan is None else set(plan.values())))
        return steps.adaround(calibrated, settings, output_dir, options=options, progress=progress, plan=plan)

    monkeypatch.setattr(pipeline, "adaround", recording)
    result = onnxmp.quantize(DIGITS, profile=profile, calib=DIGITS_CALIB, output_dir=tmp_path, settings=ADAROUND, **budget)
    bits = budget.get("bits")
    weightless = {Candidate(None, int(bits[-1]))} if bits else set()
    assert seen == [(inputs, {Candidate.parse(bits)} | weightless if bits else None)]
    assert result.point.measured_sqnr_db is not None and (tmp_path / "adaround.jsonl").exists()
