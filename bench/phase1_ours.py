"""Run onnxmp's phase 1 once, in a fresh process, and print its figures as one JSON line.

Why a separate process: peak RSS must be this run's alone (the driver,
bench/phase1_vs_aimet.py, runs AIMET in another process and compares).

Techniques (--technique):
  naive    whole QDQ model per evaluation, basic ORT optimizations, batch 32 (the textbook way)
  ort-all  whole model per evaluation, all ORT optimizations (NCHWc layouts), batch 64
  suffix   onnxmp's phase 1: only the part of the graph after the group, fed from a float
           frontier cache walked forward group by group (all optimizations, batch 64)
  suffix-processes  the same, split over 2 worker processes of 1 thread each

Usage: python bench/phase1_ours.py --model M.onnx --inputs X.npz [--groups-every K] [--technique T]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

from onnxmp import pipeline, runtime
from onnxmp.calib_data import CalibrationSet
from onnxmp.passes.calibrate import calibrate
from onnxmp.passes.executors import run_in_processes
from onnxmp.passes.insert_qdq import WeightStorage, insert_qdq
from onnxmp.passes.sensitivity import reference_outputs, sensitivity
from onnxmp.quant_math import signal_and_noise
from onnxmp.records import GroupAnalysis, Plan
from onnxmp.store import ResultStore


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


def float_forward_seconds(model: onnx.ModelProto, calib: CalibrationSet, batch_size: int) -> float:
    sess = runtime.session(model)
    for feeds in calib.batches(batch_size):  # warm-up
        sess.run(None, feeds)
        break
    start = time.perf_counter()
    for feeds in calib.batches(batch_size):
        sess.run(None, feeds)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--inputs", required=True)
    parser.add_argument("--profile", default="npu")
    parser.add_argument("--groups-every", type=int, default=1, help="measure every K-th group only")
    parser.add_argument("--technique", default="suffix", choices=["naive", "ort-all", "suffix", "suffix-processes"])
    args = parser.parse_args()
    with np.load(args.inputs) as data:
        arrays = {k: data[k] for k in data.files if k != "label"}
    model, profile, calib = pipeline.load_inputs(args.model, args.profile, arrays)
    prepared = pipeline.prepare(model, profile, calib)
    groups = prepared.analysis.groups[:: args.groups_every]
    prepared = dataclasses.replace(prepared, analysis=GroupAnalysis(groups, (), prepared.analysis.anchors))
    encodings = calibrate(prepared.model, prepared.graph, prepared.analysis, calib, profile=profile)
    evaluations = sum(len(g.candidates) for g in groups)
    before_phase1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    if args.technique in ("naive", "ort-all"):
        naive = args.technique == "naive"
        whole_model_phase1(prepared, encodings, calib, optimization="basic" if naive else "all",
                           batch_size=32 if naive else 64)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            executor, jobs = (None, 1)
            if args.technique == "suffix-processes":
                executor, jobs = (lambda work, consume: run_in_processes(work, consume, workers=2)), 2
            sensitivity(prepared.model, prepared.analysis, encodings, calib,
                        store=ResultStore(Path(tmp) / "s.jsonl", "bench"), batch_size=64,
                        executor=executor, jobs=jobs, threads=1 if jobs > 1 else None)
    seconds = time.perf_counter() - start
    forward = float_forward_seconds(prepared.model, calib, 64)
    peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    print(json.dumps({
        "technique": args.technique, "groups": len(groups), "evaluations": evaluations, "seconds": seconds,
        "evals_per_s": evaluations / seconds, "peak_rss_mb": peak / 1024, "peak_rss_before_phase1_mb": before_phase1 / 1024, "float_forward_s": forward,
        "naive_cost_ratio": seconds / (evaluations * forward), "images": calib.num_samples,
    }))


if __name__ == "__main__":
    main()
