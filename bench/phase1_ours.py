"""Run onnxmp's phase 1 once, in a fresh process, and print its figures as one JSON line.

Why a separate process: peak RSS must be this run's alone (the driver,
bench/phase1_vs_aimet.py, runs AIMET in another process and compares).

Techniques (--technique), each adding one thing to the one before:
  naive        whole QDQ model per evaluation, basic ORT optimizations, batch 32 (the textbook way)
  ort-all      whole model per evaluation, all ORT optimizations (NCHWc layouts), batch 32
  ort-all-b16  the same with batch 16 (smaller activations stay in cache)
  suffix       onnxmp's phase 1: only the part of the graph after the group, fed from the
               float frontier walk (passes/frontier_walk.py), all optimizations, batch 16
  suffix-processes  the same, split over 2 worker processes of 1 thread each

The suffix techniques also report the seconds spent building ONNX Runtime sessions (what
reusing one session across candidates could save at most) and computing float frontiers.

Usage: python bench/phase1_ours.py --model M.onnx --inputs X.npz [--groups-every K] [--technique T]
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

from onnxmp import inputs, run_records, runtime, steps
from onnxmp.calib_data import CalibrationSet
from onnxmp.passes import frontier_walk
from onnxmp.passes.calibrate import calibrate
from onnxmp.passes.insert_qdq import WeightStorage, insert_qdq
from onnxmp.phase1.executors import Placement, run_in_processes
from onnxmp.phase1.measure import reference_outputs
from onnxmp.phase1.sensitivity import context_for, sensitivity
from onnxmp.quant_math import signal_and_noise
from onnxmp.records import GroupAnalysis, Plan
from onnxmp.store import ResultStore

BATCH = run_records.Settings().batch_size  # onnxmp's default


def whole_model_phase1(prepared, encodings, calib: CalibrationSet, *, optimization: str, batch_size: int) -> int:
    """The naive method: for every (group, candidate), the whole network with that group quantized."""
    reference = reference_outputs(prepared.model, calib, batch_size=batch_size)
    count = 0
    for group in prepared.analysis.groups:
        for candidate in group.candidates:
            model = insert_qdq(prepared.model, analysis=prepared.analysis, plan=Plan({group.id: candidate}),
                               encodings=encodings, weights=WeightStorage.FAKE_FLOAT)
            sess = runtime.session(model, optimization=optimization)
            noise = 0.0
            for start, feeds in zip(range(0, calib.num_samples, batch_size), calib.batches(batch_size), strict=True):
                out = sess.run(None, feeds)[0]
                noise += signal_and_noise(next(iter(reference.values()))[start : start + batch_size], out)[1]
            count += 1
    return count


def float_forward_seconds(model: onnx.ModelProto, calib: CalibrationSet, batch_size: int, repeats: int = 3) -> float:
    """The fastest of `repeats` float forward passes over the set (the naive method's unit)."""
    return warm_seconds(runtime.session(model), list(calib.batches(batch_size)), repeats)


def warm_seconds(sess, feeds: list[dict], repeats: int) -> float:
    """The fastest of `repeats` runs of `sess` over all `feeds`, after one warm-up run."""
    sess.run(None, feeds[0])
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for batch in feeds:
            sess.run(None, batch)
        best = min(best, time.perf_counter() - start)
    return best


class Stopwatch:
    """Seconds spent inside a wrapped function, or inside the generator it returns (this process only)."""

    def __init__(self, owner, name: str) -> None:
        self.seconds, original = 0.0, getattr(owner, name)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                result = original(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start
            return self._timed_generator(result) if inspect.isgenerator(result) else result

        setattr(owner, name, timed)

    def _timed_generator(self, generator):
        while True:
            start = time.perf_counter()
            try:
                item = next(generator)
            except StopIteration:
                return
            finally:
                self.seconds += time.perf_counter() - start
            yield item


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--inputs", required=True)
    parser.add_argument("--profile", default="npu")
    parser.add_argument("--batch-size", type=int, default=BATCH, help="phase 1's batch (and the float forward's)")
    parser.add_argument("--groups-every", type=int, default=1, help="measure every K-th group only")
    parser.add_argument("--technique", default="suffix",
                        choices=["naive", "ort-all", "ort-all-b16", "suffix", "suffix-processes"])
    args = parser.parse_args()
    with np.load(args.inputs) as data:
        arrays = {k: data[k] for k in data.files if k != "label"}
    model, profile, calib = inputs.load_inputs(args.model, args.profile, arrays)
    prepared = steps.prepare(model, profile, calib)
    groups = prepared.analysis.groups[:: args.groups_every]
    prepared = dataclasses.replace(prepared, analysis=GroupAnalysis(groups, (), prepared.analysis.anchors))
    encodings = calibrate(prepared.model, prepared.graph, prepared.analysis, calib, profile=profile)
    evaluations = sum(len(g.candidates) for g in groups)
    before_phase1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    sessions = Stopwatch(runtime, "session")
    walk = Stopwatch(frontier_walk.FrontierWalk, "_computed")
    if args.technique in ("naive", "ort-all", "ort-all-b16"):
        whole_model_phase1(prepared, encodings, calib, optimization="basic" if args.technique == "naive" else "all",
                           batch_size=16 if args.technique == "ort-all-b16" else 32)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            placement = Placement()
            if args.technique == "suffix-processes":
                placement = Placement(lambda work, consume: run_in_processes(work, consume, workers=2), 2, 1)
            context = context_for(prepared.model, prepared.analysis, encodings, calib, batch_size=args.batch_size)
            sensitivity(context, store=ResultStore(Path(tmp) / "s.jsonl", "bench"), placement=placement)
    seconds = time.perf_counter() - start
    session_build_s = sessions.seconds
    forward = float_forward_seconds(prepared.model, calib, args.batch_size)
    peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    print(json.dumps({
        "technique": args.technique, "groups": len(groups), "evaluations": evaluations, "seconds": seconds,
        "evals_per_s": evaluations / seconds, "peak_rss_mb": peak / 1024, "peak_rss_before_phase1_mb": before_phase1 / 1024, "float_forward_s": forward,
        "naive_cost_ratio": seconds / (evaluations * forward), "images": calib.num_samples,
        "session_build_s": session_build_s, "frontier_walk_s": walk.seconds,
    }))


if __name__ == "__main__":
    main()
