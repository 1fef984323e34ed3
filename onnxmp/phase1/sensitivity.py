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
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
import onnx

from onnxmp import model_io, quant_math, runtime
from onnxmp.calib_data import CalibrationSet
from onnxmp.graph import build
from onnxmp.passes.extract_subgraph import affected_nodes, frontier, subgraph
from onnxmp.passes.insert_qdq import WeightStorage, insert_qdq
from onnxmp.phase1.frontier_walk import DEFAULT_BUDGET_BYTES, Chunk, FrontierWalk
from onnxmp.records import (
    Candidate,
    GroupAnalysis,
    Plan,
    QuantizerGroup,
    SensitivityTable,
    TensorEncoding,
)
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
    chunks = zip(range(0, calib.num_samples, batch_size), calib.batches(batch_size), strict=True)
    return _measure_chunks(model, chunks, reference, signal_of(reference))


@dataclass(frozen=True)
class Phase1Job:
    """One worker's share of phase 1: the `pending` (group, candidate) pairs it measures.

    Everything a worker needs travels in the job (picklable for process pools and Ray):
    the canonical model (`model_io.pack`: a large one as a weightless copy plus its weights
    as arrays, decided where the job is made, so workers need no thresholds), all groups
    in network order (every job walks the same float frontier chain, so results do not
    depend on how phase 1 was split), the encodings, the calibration inputs and the float
    reference outputs.
    """

    model: model_io.PackedModel
    groups: tuple[QuantizerGroup, ...]
    anchors: Mapping[str, str]
    encodings: Mapping[tuple[str, int], TensorEncoding]
    inputs: Mapping[str, np.ndarray]
    reference: Mapping[str, np.ndarray]
    pending: frozenset[tuple[str, Candidate]]
    batch_size: int
    quantize_bias: bool
    threads: int | None = None
    frontier_budget_bytes: int = DEFAULT_BUDGET_BYTES


Executor = Callable[[Sequence[Phase1Job], Callable[[dict], None]], None]


def sensitivity(
    model: onnx.ModelProto,
    analysis: GroupAnalysis,
    encodings: Mapping[tuple[str, int], TensorEncoding],
    calib: CalibrationSet,
    *,
    store: ResultStore,
    batch_size: int = 64,
    progress: Progress | None = None,
    quantize_bias: bool = False,
    executor: Executor | None = None,
    jobs: int = 1,
    threads: int | None = None,
    reference: Mapping[str, np.ndarray] | None = None,
) -> SensitivityTable:
    """SQNR (dB) of every (group, candidate); finished entries are read back from `store`.

    The pending evaluations are split into `jobs` runs of consecutive groups and handed to
    `executor` (default: this process, one job after the other); every result is appended
    to the store as soon as it arrives. `reference` (the float outputs over `calib`) is
    computed here unless the caller already has it.
    """
    done = {(e["group"], Candidate.parse(e["candidate"])): e for e in store.entries(STORE_KIND)}
    tasks = [(g.id, c) for g in analysis.groups for c in g.candidates]
    pending = frozenset(t for t in tasks if t not in done)
    logger.info("phase 1: %d evaluations, %d already in %s", len(tasks), len(tasks) - len(pending), store.path)

    def consume(entry: dict) -> None:
        store.append(STORE_KIND, entry)
        done[(entry["group"], Candidate.parse(entry["candidate"]))] = entry
        if progress is not None:
            progress(len(done), len(tasks), f"{entry['group']} @ {entry['candidate']}")

    if pending:
        if reference is None:
            reference = reference_outputs(model, calib, batch_size=batch_size)
        work = split_jobs(model, analysis, encodings, calib, pending, reference, batch_size=batch_size,
                          quantize_bias=quantize_bias, jobs=jobs, threads=threads)
        (executor or run_jobs_here)(work, consume)
    missing = [t for t in tasks if t not in done]
    if missing:
        raise RuntimeError(f"phase 1 finished without {len(missing)} results, e.g. {missing[0]}")
    return SensitivityTable(
        {t: OutputNoise(tuple(done[t]["signal"]), tuple(done[t]["noise"])).sqnr_db for t in tasks}
    )


def split_jobs(
    model: onnx.ModelProto,
    analysis: GroupAnalysis,
    encodings: Mapping[tuple[str, int], TensorEncoding],
    calib: CalibrationSet,
    pending: frozenset[tuple[str, Candidate]],
    reference: Mapping[str, np.ndarray],
    *,
    batch_size: int,
    quantize_bias: bool,
    jobs: int,
    threads: int | None = None,
) -> list[Phase1Job]:
    """Pending groups in network order, cut into at most `jobs` runs of similar size."""
    order = network_order(build(model), analysis.groups)
    todo = [g for g in order if any((g.id, c) in pending for c in g.candidates)]
    packed = model_io.pack(model)  # one for all jobs: in this process they share its arrays
    chunks = _contiguous(todo, max(1, min(jobs, len(todo))))
    return [
        Phase1Job(
            model=packed, groups=tuple(order), anchors=dict(analysis.anchors), encodings=dict(encodings),
            inputs=dict(calib.arrays), reference=reference,
            pending=frozenset((g.id, c) for g in chunk for c in g.candidates if (g.id, c) in pending),
            batch_size=batch_size, quantize_bias=quantize_bias, threads=threads,
        )
        for chunk in chunks if chunk
    ]


def network_order(graph, groups: Sequence[QuantizerGroup]) -> list[QuantizerGroup]:
    """Groups by the position of the first node they affect (ties keep the analysis order)."""
    return sorted(groups, key=lambda g: min((graph.index(n) for n in affected_nodes(graph, g)), default=0))


def _contiguous(items: list, parts: int) -> list[list]:
    """`items` cut into `parts` consecutive runs (the first ones one longer)."""
    size, extra = divmod(len(items), parts)
    runs, start = [], 0
    for k in range(parts):
        end = start + size + (1 if k < extra else 0)
        runs.append(items[start:end])
        start = end
    return runs


def run_jobs_here(jobs: Sequence[Phase1Job], consume: Callable[[dict], None]) -> None:
    """The default executor: every job in this process, results consumed as measured."""
    for job in jobs:
        for entry in run_job(job):
            consume(entry)


def run_job(job: Phase1Job) -> Iterator[dict]:
    """Measure the job's pending (group, candidate) pairs; yield one store entry each.

    The frontier walk covers every group up to the job's last one (steps without pending
    work only advance the float checkpoint), then each candidate runs the group's suffix
    over the frontier chunk by chunk, one ONNX Runtime session at a time.
    """
    model = model_io.unpack(job.model)
    index = build(model)
    analysis = GroupAnalysis(groups=job.groups, skipped=(), anchors=MappingProxyType(dict(job.anchors)))
    cuts = [(g, nodes, frontier(index, nodes)) for g in job.groups for nodes in [affected_nodes(index, g)]]
    walk = FrontierWalk(
        model, index, job.inputs, [cut for _, _, cut in cuts],
        batch_size=job.batch_size, threads=job.threads, budget_bytes=job.frontier_budget_bytes,
    )
    signal = signal_of(job.reference)
    for step, (group, nodes, cut) in enumerate(cuts):
        candidates = [c for c in group.candidates if (group.id, c) in job.pending]
        if not candidates:
            continue
        outputs = [o for o in index.graph_outputs if index.producer_of.get(o) in nodes]
        suffix = subgraph(model, index, nodes, cut, outputs)
        for candidate in candidates:
            start = time.perf_counter()
            quantized = insert_qdq(
                suffix, analysis=analysis, plan=Plan({group.id: candidate}), encodings=job.encodings,
                weights=WeightStorage.FAKE_FLOAT, quantize_bias=job.quantize_bias,
            )
            result = _measure_chunks(quantized, walk.chunks(step), job.reference, signal, threads=job.threads)
            yield {
                "group": group.id, "candidate": str(candidate), "signal": list(result.signal),
                "noise": list(result.noise), "seconds": round(time.perf_counter() - start, 3),
            }


def _measure_chunks(
    model: onnx.ModelProto,
    chunks: Iterator[Chunk],
    reference: Mapping[str, np.ndarray],
    signal: Mapping[str, float],
    *,
    threads: int | None = None,
) -> OutputNoise:
    """Noise of the outputs against the float reference; outputs `model` lacks add signal only."""
    noise = dict.fromkeys(reference, 0.0)
    sess = runtime.session(model, threads=threads, shared_arena=True)
    names = [o.name for o in sess.get_outputs()]
    for start, feeds in chunks:
        for name, got in zip(names, sess.run(names, feeds), strict=True):
            noise[name] += quant_math.signal_and_noise(reference[name][start : start + len(got)], got)[1]
    return OutputNoise(tuple(signal[n] for n in reference), tuple(noise[n] for n in reference))


def signal_of(reference: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Sum of squares of each float output over all samples (the same for every evaluation)."""
    return {name: quant_math.signal_and_noise(want, want)[0] for name, want in reference.items()}
