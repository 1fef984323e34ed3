"""AdaRound the chosen plan once more, on the plan's own quantized network.

Why: a search rounds every layer on the float network's inputs (`steps.ADAROUND`, the paper's
§3.5): phase 1 measures each group alone in an otherwise float network, and no single
quantized prefix matches every plan the search compares, so the stitched integers are what
keeps the predictions honest. Once a plan is chosen its network is known, and rounding each
of its low-bit layers on the inputs that network really gives it (AIMET's order, as a
homogeneous `--bits` run does) fits it better. The result is kept only when it measures a
higher output SQNR on the calibration data than the stitched integers: the plan, its BOPs and
the selection stay what the search chose, and the measured output SQNR can only go up.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from onnxmp.float_candidate import quantized_part
from onnxmp.hw_profile import WeightRounding
from onnxmp.passes.round_weights import LayerRounding, Progress, round_layers
from onnxmp.records import Plan
from onnxmp.run_records import Calibrated, Decision, Prepared, Settings
from onnxmp.steps import (
    ADAROUND_HOMOGENEOUS,
    ADAROUND_STORE,
    bias_correction,
    measured_sqnr,
    simulate,
    weight_rounding,
)
from onnxmp.store import ResultStore, run_key


def plan_weights(prepared: Prepared, plan: Plan) -> set[tuple[str, int]]:
    """Every (weight, bits) `plan` quantizes: each quantized group's weights at its weight width."""
    chosen = quantized_part(plan)
    pairs = set()
    for group in prepared.analysis.groups:
        bits = chosen[group.id].w_bits if group.id in chosen else None
        pairs |= {(w, bits) for w in group.weights} if bits is not None else set()
    return pairs


def refine(
    calibrated: Calibrated, decision: Decision, settings: Settings, output_dir: Path, progress: Progress | None = None,
) -> tuple[Calibrated, Decision]:
    """`calibrated` with the chosen plan's weights AdaRounded on the plan's own network (and the
    decision with the measured SQNR of both), when that measures better; else both unchanged.

    A no-op for homogeneous runs (already rounded on their own network), without AdaRound, or
    with `settings.refine_rounding` off. Results go to the run's AdaRound store, keyed by the
    plan's network, so an interrupted run resumes and `onnxmp search` for the same plan reuses them.
    """
    prepared = calibrated.prepared
    stitched = decision.point.measured_sqnr_db
    if decision.selection is None or stitched is None or not settings.refine_rounding:
        return calibrated, decision
    if weight_rounding(prepared, settings) is not WeightRounding.ADAROUND:
        return calibrated, decision
    start = time.perf_counter()
    refined = round_plan(calibrated, decision.plan, settings, output_dir, progress)
    sqnr = measured_sqnr(refined, decision.plan, settings.batch_size)
    timings = {**decision.timings, "refine_s": time.perf_counter() - start}
    decision = replace(decision, refined_sqnr_db=sqnr, timings=timings)
    return (refined, decision) if sqnr > stitched else (calibrated, decision)


def round_plan(
    calibrated: Calibrated, plan: Plan, settings: Settings, output_dir: Path, progress: Progress | None = None,
) -> Calibrated:
    """`calibrated` with `plan`'s (weight, bits) up to the AdaRound width limit rounded in graph
    order, each on its inputs in `plan`'s network quantized so far (later layers keep their
    stitched integers and biases until their turn)."""
    prepared = calibrated.prepared
    encodings = {k: calibrated.encodings[k] for k in sorted(plan_weights(prepared, plan)) if k in calibrated.encodings}
    options = replace(ADAROUND_HOMOGENEOUS, grams=replace(ADAROUND_HOMOGENEOUS.grams, seed=settings.seed),
                      bias_correction=bias_correction(prepared, settings))

    def network(done: LayerRounding):
        return simulate(prepared, plan, calibrated.encodings, {**calibrated.rounded, **done.integers},
                        {**calibrated.biases, **done.biases})

    key = run_key(model=prepared.fingerprints["model"], calibration=prepared.fingerprints["calibration"])
    chosen = round_layers(prepared.model, encodings, calibrated.calib, options=options,
                          store=ResultStore(Path(output_dir) / ADAROUND_STORE, key), quantized=network, progress=progress)
    return replace(calibrated, rounded={**calibrated.rounded, **chosen.integers}, biases={**calibrated.biases, **chosen.biases})
