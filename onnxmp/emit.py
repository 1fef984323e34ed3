"""Emit: the deployable QDQ model, its deployed measurement, the encodings and the report.

Why: the last step of a run writes every file at once into a staging folder that replaces
the previous run's (`output_folder`), so a folder always holds one run; it is its own module
so that `pipeline` stays the order of the steps.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from onnxmp import encodings as encodings_format
from onnxmp import model_io, output_folder
from onnxmp.passes.bake_weights import bake_weights
from onnxmp.passes.insert_qdq import WeightStorage, insert_quantizers
from onnxmp.phase1.measure import measure
from onnxmp.run_records import Calibrated, Decision, Result, Settings
from onnxmp.steps import biased_model, quantizers

# every file a run may write (models' weights go to .data beyond 2 GB); the store is not one
OUTPUT_FILES = (
    "model.qdq.onnx", "model.qdq.onnx.data", "model.adarounded.onnx", "model.adarounded.onnx.data",
    "encodings.json", "plan.json", "pareto.csv", "report.md", "report.html", "sensitivity.json",
)

def emit(calibrated: Calibrated, decision: Decision, output_dir: Path, *, settings: Settings) -> Result:
    """Write the deployable QDQ model, measure it as deployed, and write the run's records, all
    at once: into a staging folder, switched in for the previous run's (`output_folder`)."""
    with output_folder.staged(output_dir, OUTPUT_FILES) as staging:
        result = _write_outputs(calibrated, decision, staging, settings=settings)
    return replace(result, paths={kind: output_dir / path.name for kind, path in result.paths.items()})


def _write_outputs(calibrated: Calibrated, decision: Decision, output_dir: Path, *, settings: Settings) -> Result:
    from onnxmp import report

    prepared = calibrated.prepared
    chosen = quantizers(prepared, decision.plan, calibrated.encodings, calibrated.rounded, calibrated.biases)
    model = biased_model(prepared, decision.plan, calibrated.biases)
    qdq = insert_quantizers(model, chosen, weights=WeightStorage.INTEGER)
    paths = {"model": model_io.save(qdq, output_dir / "model.qdq.onnx")}
    decision = _with_deployed_sqnr(decision, calibrated, paths["model"], settings.batch_size)
    if chosen.integers or model is not prepared.model:  # AIMET's AdaRound export: weights on their grid
        # points (and corrected biases) + frozen encodings
        paths["adarounded"] = model_io.save(bake_weights(model, quantizers=chosen), output_dir / "model.adarounded.onnx")
    user_set, absent = encodings_format.user_named(
        prepared.original, model, {**chosen.weights, **chosen.biases}, chosen.activations
    )
    paths["encodings"] = model_io.write_text(
        encodings_format.to_json(user_set, version=settings.encodings_version), output_dir / "encodings.json"
    )
    paths.update(report.write_all(prepared, decision, output_dir, absent=absent))
    return Result.of(decision, paths)


def _with_deployed_sqnr(decision: Decision, calibrated: Calibrated, model_path: Path, batch_size: int) -> Decision:
    """The decision whose chosen point carries the SQNR of the written model run as a user runs
    it (ONNX Runtime's QDQ rewrites on): one more pass over the calibration data.

    Why: the search measures with those rewrites off, so it sees exactly the QDQ arithmetic;
    what users get may differ (integer kernels, ONNX Runtime's own int32 biases), and the
    report says by how much.
    """
    start = time.perf_counter()
    deployed = measure(str(model_path), calibrated.calib, calibrated.reference, batch_size=batch_size, simulate=False)
    point = replace(decision.point, deployed_sqnr_db=deployed.sqnr_db)
    curve = tuple(point if p is decision.point else p for p in decision.curve)
    selection = replace(decision.selection, point=point) if decision.selection is not None else None
    timings = {**decision.timings, "deployed_check_s": time.perf_counter() - start}
    return replace(decision, point=point, curve=curve, selection=selection, timings=timings)
