"""Phase 1: the sensitivity list, SQNR of the network output with one group quantized alone.

Why: the paper's search needs, for every group g and candidate c, how much noise g alone
at c puts on the output: SQNR(g, c) = 10 log10(sum_n ||F(x_n)||^2 / sum_n ||F(x_n) - F_gc(x_n)||^2).

Rule cases:
1. Sums run over all calibration samples in float64, so the value does not depend on the
   batch size; there is no epsilon: zero noise gives +inf dB (the group changes nothing).
2. A model with several outputs combines them by the mean of the per-output noise-to-signal
   ratios, so each output weighs the same whatever its scale; with one output this is the
   formula above.
3. Each result is appended to the store as soon as it is measured and read back on rerun.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx

from onnxmp import model_io
from onnxmp.calib_data import CalibrationSet
from onnxmp.errors import RunError
from onnxmp.graph import build
from onnxmp.phase1.executors import Placement
from onnxmp.phase1.jobs import Phase1Job, Phase1Result, contiguous, network_order, run_jobs_here
from onnxmp.phase1.measure import reference_outputs
from onnxmp.records import Candidate, GroupAnalysis, SensitivityTable, TensorEncoding
from onnxmp.store import ResultStore

logger = logging.getLogger(__name__)

STORE_KIND = "phase1"
Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class Phase1Context:
    """What every phase-1 measurement of one run reads: the canonical model, its groups and
    ranges, the calibration inputs and the float outputs over them (computed once per run)."""

    model: onnx.ModelProto
    analysis: GroupAnalysis
    encodings: Mapping[tuple[str, int], TensorEncoding]
    calib: CalibrationSet
    reference: Mapping[str, Sequence[np.ndarray]]  # float outputs, one array per run (measure.reference_outputs)
    batch_size: int = 16
    quantize_bias: bool = False
    rounded: Mapping[tuple[str, int], np.ndarray] = field(default_factory=dict)  # AdaRounded integers
    biases: Mapping[tuple[str, int], np.ndarray] = field(default_factory=dict)  # corrected biases


def context_for(
    model: onnx.ModelProto,
    analysis: GroupAnalysis,
    encodings: Mapping[tuple[str, int], TensorEncoding],
    calib: CalibrationSet,
    *,
    batch_size: int = 16,
    quantize_bias: bool = False,
) -> Phase1Context:
    """A context whose float reference is computed here (one forward pass over `calib`)."""
    reference = reference_outputs(model, calib, batch_size=batch_size)
    return Phase1Context(model, analysis, encodings, calib, reference, batch_size, quantize_bias)


def sensitivity(
    context: Phase1Context,
    *,
    store: ResultStore,
    placement: Placement = Placement(),
    progress: Progress | None = None,
    kind: str = STORE_KIND,
) -> SensitivityTable:
    """SQNR (dB) of every (group, candidate); finished entries are read back from `store`
    (entries of `kind`: other measurements of the same shape keep their own kind).

    The pending evaluations are split into `placement.jobs` runs of consecutive groups and
    handed to `placement.executor` (default: this process, one job after the other); every
    result is appended to the store as soon as it arrives.

    Raises:
        RunError: an executor returned without some results (e.g. a worker was killed);
            what was measured is in the store, so a rerun resumes.
    """
    done = stored_results(store, kind)
    tasks = [(g.id, c) for g in context.analysis.groups for c in g.candidates]
    pending = frozenset(t for t in tasks if t not in done)
    logger.info("phase 1: %d evaluations, %d already in %s", len(tasks), len(tasks) - len(pending), store.path)

    def consume(result: Phase1Result) -> None:
        store.append(kind, result.to_entry())
        done[(result.group, result.candidate)] = result
        if progress is not None:
            progress(len(done), len(tasks), f"{result.group} @ {result.candidate}")

    if pending:
        (placement.executor or run_jobs_here)(split_jobs(context, pending, placement), consume)
    missing = [t for t in tasks if t not in done]
    if missing:
        group, candidate = missing[0]
        raise RunError(f"phase 1 ended without {len(missing)} results (e.g. {group} @ {candidate}); rerun to resume")
    return SensitivityTable({t: done[t].noise.sqnr_db for t in tasks})


def stored_results(store: ResultStore, kind: str = STORE_KIND) -> dict[tuple[str, Candidate], Phase1Result]:
    """The valid phase-1 results in `store`, by (group, candidate); damaged entries are skipped."""
    stored = {}
    for entry in store.entries(kind):
        result = Phase1Result.from_entry(entry)
        if result is not None:
            stored[(result.group, result.candidate)] = result
    return stored


def split_jobs(
    context: Phase1Context, pending: frozenset[tuple[str, Candidate]], placement: Placement = Placement()
) -> list[Phase1Job]:
    """Pending groups in network order, cut into at most `placement.jobs` runs of similar size."""
    order = network_order(build(context.model), context.analysis.groups)
    todo = [g for g in order if any((g.id, c) in pending for c in g.candidates)]
    packed = model_io.pack(context.model)  # one for all jobs: in this process they share its arrays
    chunks = contiguous(todo, max(1, min(placement.jobs, len(todo))))
    return [
        Phase1Job(
            model=packed, groups=tuple(order), anchors=dict(context.analysis.anchors),
            encodings=dict(context.encodings), inputs=context.calib, reference=context.reference,
            pending=frozenset((g.id, c) for g in chunk for c in g.candidates if (g.id, c) in pending),
            batch_size=context.batch_size, quantize_bias=context.quantize_bias, threads=placement.threads,
            rounded=dict(context.rounded), biases=dict(context.biases),
        )
        for chunk in chunks if chunk
    ]
