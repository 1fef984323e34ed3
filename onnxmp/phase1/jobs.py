"""Phase-1 work as picklable jobs, and the one function that runs a job.

Why: phase 1 is G groups x K candidates of independent measurements. A job carries all a
worker needs (this process, a spawned process or a Ray task), so every executor runs the
same `run_job`, and results are identical whatever ran them: a job's numbers depend only
on the job (fixed ONNX Runtime settings and thread count).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np

from onnxmp import model_io
from onnxmp.calib_data import CalibrationSet
from onnxmp.graph import DataflowGraph, build
from onnxmp.passes.correct_biases import biases_for, with_biases
from onnxmp.passes.extract_subgraph import affected_nodes, frontier, subgraph
from onnxmp.passes.frontier_walk import DEFAULT_BUDGET_BYTES, FrontierWalk
from onnxmp.passes.insert_qdq import WeightStorage, insert_qdq
from onnxmp.phase1.measure import OutputNoise, measure_chunks, signal_of
from onnxmp.records import Candidate, GroupAnalysis, Plan, QuantizerGroup, TensorEncoding


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
    inputs: CalibrationSet
    reference: Mapping[str, Sequence[np.ndarray]]  # float outputs, one array per run
    pending: frozenset[tuple[str, Candidate]]
    batch_size: int
    quantize_bias: bool
    threads: int | None = None
    frontier_budget_bytes: int = DEFAULT_BUDGET_BYTES
    rounded: Mapping[tuple[str, int], np.ndarray] = field(default_factory=dict)  # AdaRounded integers
    biases: Mapping[tuple[str, int], np.ndarray] = field(default_factory=dict)  # corrected biases


@dataclass(frozen=True)
class Phase1Result:
    """One measured (group, candidate): the output noise with that group alone quantized."""

    group: str
    candidate: Candidate
    noise: OutputNoise
    seconds: float

    def to_entry(self) -> dict:
        """The store's JSON form (field order fixed: stores are compared byte for byte)."""
        return {
            "group": self.group, "candidate": str(self.candidate), "signal": list(self.noise.signal),
            "noise": list(self.noise.noise), "seconds": self.seconds,
        }

    @staticmethod
    def from_entry(entry: Mapping) -> Phase1Result | None:
        """The result a store entry holds, or None when the entry is not a valid result
        (missing or mistyped fields are skipped like torn lines, so a rerun measures them)."""
        try:
            signal, noise = _numbers(entry["signal"]), _numbers(entry["noise"])
            candidate = Candidate.parse(str(entry["candidate"]) if isinstance(entry["candidate"], str) else "")
            group, seconds = entry["group"], float(entry.get("seconds", 0.0))
        except (KeyError, TypeError, ValueError, OverflowError):
            return None
        if not isinstance(group, str) or len(signal) != len(noise) or not signal:
            return None
        if any(math.isnan(v) or v < 0 for v in (*signal, *noise)) or not all(map(math.isfinite, signal)):
            return None
        return Phase1Result(group, candidate, OutputNoise(signal, noise), seconds)


def _numbers(values: object) -> tuple[float, ...]:
    """A JSON list of numbers as floats (a string, a mapping or a bool is not one)."""
    if not isinstance(values, list) or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in values):
        raise TypeError("not a list of numbers")
    return tuple(float(v) for v in values)


Executor = Callable[[Sequence[Phase1Job], Callable[[Phase1Result], None]], None]


def network_order(graph: DataflowGraph, groups: Sequence[QuantizerGroup]) -> list[QuantizerGroup]:
    """Groups by the position of the first node they affect (ties keep the analysis order)."""
    return sorted(groups, key=lambda g: min((graph.index(n) for n in affected_nodes(graph, g)), default=0))


def contiguous(items: list, parts: int) -> list[list]:
    """`items` cut into `parts` consecutive runs (the first ones one longer)."""
    size, extra = divmod(len(items), parts)
    runs, start = [], 0
    for k in range(parts):
        end = start + size + (1 if k < extra else 0)
        runs.append(items[start:end])
        start = end
    return runs


def run_jobs_here(jobs: Sequence[Phase1Job], consume: Callable[[Phase1Result], None]) -> None:
    """The default executor: every job in this process, results consumed as measured."""
    for job in jobs:
        for result in run_job(job):
            consume(result)


def run_job(job: Phase1Job) -> Iterator[Phase1Result]:
    """Measure the job's pending (group, candidate) pairs; yield one result each.

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
            plan = Plan({group.id: candidate})
            quantized = insert_qdq(
                with_biases(suffix, biases_for(analysis, plan, job.biases)), analysis=analysis, plan=plan, encodings=job.encodings,
                weights=WeightStorage.FAKE_FLOAT, quantize_bias=job.quantize_bias, rounded=job.rounded,
            )
            noise = measure_chunks(quantized, walk.chunks(step), job.reference, signal, threads=job.threads)
            yield Phase1Result(group.id, candidate, noise, round(time.perf_counter() - start, 3))
