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
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from onnxmp import quant_math, runtime
from onnxmp.calib_data import CalibrationSet
from onnxmp.records import Candidate, GroupAnalysis, Plan, SensitivityTable, TensorEncoding
from onnxmp.store import ResultStore
from onnxmp.passes.insert_qdq import WeightStorage, insert_qdq

logger = logging.getLogger(__name__)

STORE_KIND = "phase1"
Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class OutputNoise:
    """Per-output sums of squares of the float output and of its error, over all samples."""

    signal: tuple[float, ...]
    noise: tuple[float, ...]

    @property
    def noise_ratio(self) -> float:
        """Mean over outputs of noise / signal (0.0 when nothing changed)."""
        ratios = [n / s if s > 0 else (0.0 if n == 0 else math.inf) for s, n in zip(self.signal, self.noise, strict=True)]
        return float(np.mean(ratios))

    @property
    def sqnr_db(self) -> float:
        ratio = self.noise_ratio
        return math.inf if ratio == 0 else -10 * math.log10(ratio)


def reference_outputs(model: onnx.ModelProto, calib: CalibrationSet, *, batch_size: int) -> list[list[np.ndarray]]:
    """Float outputs per batch (outputs only: their size does not grow with the graph)."""
    sess = runtime.session(model)
    return [list(out.values()) for out in runtime.run_batches(sess, calib.batches(batch_size))]


def measure(
    model: onnx.ModelProto, calib: CalibrationSet, reference: Sequence[Sequence[np.ndarray]], *, batch_size: int
) -> OutputNoise:
    """Signal and noise of `model`'s outputs against the float `reference`, batch by batch."""
    sess = runtime.session(model)
    signal: list[float] = []
    noise: list[float] = []
    for outputs, expected in zip(runtime.run_batches(sess, calib.batches(batch_size)), reference, strict=True):
        for k, (got, want) in enumerate(zip(outputs.values(), expected, strict=True)):
            s, n = quant_math.signal_and_noise(want, got)
            if k == len(signal):
                signal.append(0.0)
                noise.append(0.0)
            signal[k] += s
            noise[k] += n
    return OutputNoise(tuple(signal), tuple(noise))


def sensitivity(
    model: onnx.ModelProto,
    analysis: GroupAnalysis,
    encodings: Mapping[tuple[str, int], TensorEncoding],
    calib: CalibrationSet,
    *,
    store: ResultStore,
    batch_size: int = 32,
    progress: Progress | None = None,
) -> SensitivityTable:
    """SQNR (dB) of every (group, candidate); finished entries are read back from `store`."""
    done = {(e["group"], Candidate.parse(e["candidate"])): e for e in store.entries(STORE_KIND)}
    tasks = [(g.id, c) for g in analysis.groups for c in g.candidates]
    todo = [t for t in tasks if t not in done]
    logger.info("phase 1: %d evaluations, %d already in %s", len(tasks), len(tasks) - len(todo), store.path)
    reference = reference_outputs(model, calib, batch_size=batch_size) if todo else []
    for k, (group_id, candidate) in enumerate(todo):
        if progress is not None:
            progress(len(tasks) - len(todo) + k, len(tasks), f"{group_id} @ {candidate}")
        start = time.perf_counter()
        quantized = insert_qdq(
            model, analysis=analysis, plan=Plan({group_id: candidate}), encodings=encodings,
            weights=WeightStorage.FAKE_FLOAT,
        )
        result = measure(quantized, calib, reference, batch_size=batch_size)
        entry = {
            "group": group_id, "candidate": str(candidate), "signal": list(result.signal),
            "noise": list(result.noise), "seconds": round(time.perf_counter() - start, 3),
        }
        store.append(STORE_KIND, entry)
        done[(group_id, candidate)] = entry
    if progress is not None:
        progress(len(tasks), len(tasks), "done")
    return SensitivityTable(
        {t: OutputNoise(tuple(done[t]["signal"]), tuple(done[t]["noise"])).sqnr_db for t in tasks}
    )
