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
from onnxmp.passes.extract_subgraph import affected_nodes, frontier, producing_nodes, subgraph
from onnxmp.passes.insert_qdq import WeightStorage, insert_qdq

from onnxmp import quant_math, runtime
from onnxmp.calib_data import CalibrationSet
from onnxmp.graph import build
from onnxmp.records import Candidate, GroupAnalysis, Plan, SensitivityTable, TensorEncoding
from onnxmp.store import ResultStore

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


def reference_outputs(model: onnx.ModelProto, calib: CalibrationSet, *, batch_size: int) -> dict[str, np.ndarray]:
    """Float outputs over all samples, by output name (outputs only, never intermediates)."""
    sess = runtime.session(model)
    batches = list(runtime.run_batches(sess, calib.batches(batch_size)))
    return {name: np.concatenate([b[name] for b in batches]) for name in batches[0]}


def measure(
    model: onnx.ModelProto, calib: CalibrationSet, reference: Mapping[str, np.ndarray], *, batch_size: int
) -> OutputNoise:
    """Signal and noise of the whole `model`'s outputs against the float `reference`."""
    return _measure_suffix(model, dict(calib.arrays), reference, batch_size=batch_size)


def sensitivity(
    model: onnx.ModelProto,
    analysis: GroupAnalysis,
    encodings: Mapping[tuple[str, int], TensorEncoding],
    calib: CalibrationSet,
    *,
    store: ResultStore,
    batch_size: int = 32,
    progress: Progress | None = None,
    quantize_bias: bool = False,
) -> SensitivityTable:
    """SQNR (dB) of every (group, candidate); finished entries are read back from `store`.

    Groups are visited in network order; each is measured on its suffix only, fed with
    float frontier values that `FrontierCache` carries forward from group to group.
    """
    done = {(e["group"], Candidate.parse(e["candidate"])): e for e in store.entries(STORE_KIND)}
    tasks = [(g.id, c) for g in analysis.groups for c in g.candidates]
    remaining = sum(t not in done for t in tasks)
    logger.info("phase 1: %d evaluations, %d already in %s", len(tasks), len(tasks) - remaining, store.path)
    if remaining:
        index = build(model)
        reference = reference_outputs(model, calib, batch_size=batch_size)
        cache = FrontierCache(model, index, calib, batch_size=batch_size)
        cuts = [(g, affected_nodes(index, g)) for g in analysis.groups]
        cuts.sort(key=lambda item: min((index.index(n) for n in item[1]), default=0))
        cache.plan([frontier(index, nodes) for _, nodes in cuts])
        for step, (group, nodes) in enumerate(cuts):
            pending = [c for c in group.candidates if (group.id, c) not in done]
            if not pending:
                continue
            inputs = frontier(index, nodes)
            values = cache.values(step, inputs)
            outputs = [o for o in index.graph_outputs if index.producer_of.get(o) in nodes]
            suffix = subgraph(model, index, nodes, inputs, outputs)
            for candidate in pending:
                if progress is not None:
                    progress(sum(t in done for t in tasks), len(tasks), f"{group.id} @ {candidate}")
                start = time.perf_counter()
                quantized = insert_qdq(
                    suffix, analysis=analysis, plan=Plan({group.id: candidate}), encodings=encodings,
                    weights=WeightStorage.FAKE_FLOAT, quantize_bias=quantize_bias,
                )
                result = _measure_suffix(quantized, values, reference, batch_size=batch_size)
                entry = {
                    "group": group.id, "candidate": str(candidate), "signal": list(result.signal),
                    "noise": list(result.noise), "seconds": round(time.perf_counter() - start, 3),
                }
                store.append(STORE_KIND, entry)
                done[(group.id, candidate)] = entry
    if progress is not None:
        progress(len(tasks), len(tasks), "done")
    return SensitivityTable(
        {t: OutputNoise(tuple(done[t]["signal"]), tuple(done[t]["noise"])).sqnr_db for t in tasks}
    )


def _measure_suffix(
    model: onnx.ModelProto, values: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray], *, batch_size: int
) -> OutputNoise:
    """Noise of the suffix outputs against the float reference; untouched outputs add signal only."""
    signal = dict.fromkeys(reference, 0.0)
    noise = dict.fromkeys(reference, 0.0)
    count = len(next(iter(reference.values())))
    batches = ({k: v[i : i + batch_size] for k, v in values.items()} for i in range(0, count, batch_size))
    sess = runtime.session(model)
    for start, outputs in zip(range(0, count, batch_size), runtime.run_batches(sess, batches), strict=True):
        for name, got in outputs.items():
            noise[name] += quant_math.signal_and_noise(reference[name][start : start + batch_size], got)[1]
    for name, want in reference.items():
        signal[name] = quant_math.signal_and_noise(want, want)[0]
    return OutputNoise(tuple(signal.values()), tuple(noise.values()))


class FrontierCache:
    """Float values (all samples) of the tensors the next groups' suffixes read.

    Tensors are computed on demand by running only the float nodes between what is cached
    and what is asked for, and dropped once no later group reads them, so the float network
    is run about once in all and memory holds one frontier, not every activation.
    """

    def __init__(self, model: onnx.ModelProto, index, calib: CalibrationSet, *, batch_size: int) -> None:
        self._model, self._index, self._batch_size = model, index, batch_size
        self._values: dict[str, np.ndarray] = dict(calib.arrays)
        self._keep: list[set[str]] = []

    def plan(self, frontiers: Sequence[Sequence[str]]) -> None:
        """Record every step's frontier so tensors no later step reads can be dropped."""
        later: set[str] = set(self._index.graph_inputs)
        self._keep = [set() for _ in frontiers]
        for step in range(len(frontiers) - 1, -1, -1):
            later |= set(frontiers[step])
            self._keep[step] = set(later)

    def values(self, step: int, tensors: Sequence[str]) -> dict[str, np.ndarray]:
        missing = [t for t in tensors if t not in self._values]
        if missing:
            self._compute(missing)
        for name in list(self._values):  # after computing: the last frontier is the cheapest source
            if name not in self._keep[step]:
                del self._values[name]
        return {t: self._values[t] for t in tensors}

    def _compute(self, wanted: Sequence[str]) -> None:
        nodes = producing_nodes(self._index, wanted, set(self._values))
        inputs = frontier(self._index, nodes)
        segment = subgraph(self._model, self._index, nodes, inputs, wanted)
        sess = runtime.session(segment)
        count = len(next(iter(self._values.values())))
        parts: dict[str, list[np.ndarray]] = {t: [] for t in wanted}
        for start in range(0, count, self._batch_size):
            feeds = {t: self._values[t][start : start + self._batch_size] for t in inputs}
            for name, value in zip(wanted, sess.run(list(wanted), feeds), strict=True):
                parts[name].append(value)
        self._values.update({name: np.concatenate(chunks) for name, chunks in parts.items()})
