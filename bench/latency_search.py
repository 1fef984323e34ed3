"""Issue 13 benchmark: latency as the budget, on EfficientNet-Lite0, in one run.

Part 1, profile ort-cpu (ONNX Runtime CPU, 2 threads; candidates float, W8A16, W8A8):
per-group in-context latency at each candidate and the fitted border cost (measured afresh
in every run, so every ratio comes from one run), the greedy curve priced in milliseconds (borders included), the fastest configuration
within 1 point of FP32 top-1 (hybrid search on the curve, then the measured check of
search.select_measured over the 3 cheapest-estimated points meeting it and the homogeneous
configurations), its measured batch-1 and batch-32 latency against float and W8A8, its top-1,
and the estimate (with and without borders) against the measured latency for the homogeneous,
searched and chosen plans.

Part 2, profile systolic-amed (AMED Table 1 accelerator, numpy model): for two latency
budgets, top-1 of greedy-on-BOPs (the least noisy point of the BOPs curve within the
budget), greedy-on-latency, and AMED (Metropolis-Hastings; its best samples measured by
true SQNR on the calibration set, then the best scored on val); AMED's samples,
acceptance rate and wall time.

Calibration: the first --calib images of imagenet/samples (default 64, reduced from the
README's 256 to keep the run short); top-1 on the first --val images of imagenet/val
(default all 1300). Phase-1 stores live in the system temp folder (resumable).

Run: flock /work/bench.lock python bench/latency_search.py [--calib 64] [--val 1300] [--amed-samples 5000]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import onnx

sys.path.insert(0, str(Path(__file__).parent))
import imagenet  # noqa: E402

from onnxmp import bops, pipeline, steps  # noqa: E402
from onnxmp.float_candidate import (  # noqa: E402
    estimate_error,
    float_of,
    label,
    quantized_part,
    table_with_float,
    with_float,
)
from onnxmp.inputs import load_inputs  # noqa: E402
from onnxmp.latency import SystolicLatency, layers_of  # noqa: E402
from onnxmp.latency_spec import OrtSpec  # noqa: E402
from onnxmp.passes.insert_qdq import insert_qdq  # noqa: E402
from onnxmp.phase1.ort_borders import crossing, probe_plans  # noqa: E402
from onnxmp.phase1.ort_latency import Timing, median_ms, timed  # noqa: E402
from onnxmp.phase1.ort_model import integer_candidate, ort_latency_model  # noqa: E402
from onnxmp.phase1.sensitivity import Phase1Context, sensitivity  # noqa: E402
from onnxmp.records import Candidate, Plan  # noqa: E402
from onnxmp.run_records import Settings, homogeneous_plan  # noqa: E402
from onnxmp.search.amed import AmedSettings, amed_search, pick_measured  # noqa: E402
from onnxmp.search.greedy import pareto_curve  # noqa: E402
from onnxmp.search.latency_greedy import latency_curve, with_latency  # noqa: E402
from onnxmp.search.select import select_by_latency, select_by_target  # noqa: E402
from onnxmp.search.select_measured import verify_selection  # noqa: E402

W8A8, W8A16 = Candidate(8, 8), Candidate(8, 16)
BATCH32 = OrtSpec(threads=2, runs=10, warmups=2)


class Run:
    """Phase 1 on one profile and what every measurement needs (one per profile)."""

    def __init__(self, profile: str, model: onnx.ModelProto, calib, val) -> None:
        settings = Settings()
        model, self.profile, self.calib = load_inputs(model, profile, calib)
        self.prepared = steps.prepare(model, self.profile, self.calib)
        self.calibrated = steps.calibrate_ranges(self.prepared, self.calib, settings)
        self.encodings = self.calibrated.encodings
        store = pipeline.open_store(imagenet.CACHE / f"latency-{profile}-{self.calib.fingerprint()[:12]}", self.prepared, settings)
        start = time.perf_counter()
        context = Phase1Context(self.prepared.model, self.prepared.analysis, self.encodings, self.calib,
                                self.calibrated.reference, 16, self.profile.quantize_bias)
        self.table = sensitivity(context, store=store)
        print(f"[{profile}] {len(self.prepared.analysis.groups)} groups, phase 1 {time.perf_counter() - start:.0f} s (0 if resumed)", flush=True)
        self.images, self.labels = val
        self.scores: dict[Plan, float] = {}

    def model_of(self, plan: Plan, *, deploy: bool = False) -> onnx.ModelProto:
        plan = quantized_part(plan)
        if not deploy:
            return steps.simulate(self.prepared, plan, self.encodings)
        return insert_qdq(self.prepared.model, analysis=self.prepared.analysis, plan=plan, encodings=self.encodings,
                          quantize_bias=self.profile.quantize_bias)

    def top1(self, plan: Plan) -> float:
        if plan not in self.scores:
            self.scores[plan] = imagenet.top1(self.model_of(plan), self.images, self.labels)
        return self.scores[plan]

    def sqnr(self, plan: Plan) -> float:
        return steps.measured_sqnr(self.calibrated, quantized_part(plan), 16)

    def homogeneous(self, bits: Candidate) -> Plan:
        return homogeneous_plan(self.prepared.analysis, bits, self.profile)


def ort_part(model, calib, val, fp32: float) -> None:
    run = Run("ort-cpu", model, calib, val)
    spec = run.profile.latency
    analysis = run.prepared.analysis
    groups = with_float(analysis).groups
    table = table_with_float(run.table, analysis)
    shapes = {name: (1, *a.shape[1:]) for name, a in run.calib.arrays.items()}
    start = time.perf_counter()
    latency = ort_latency_model(run.prepared.model, analysis, run.encodings, spec, sample_shapes=shapes,
                                quantize_bias=run.profile.quantize_bias)  # fresh: every ratio from one run
    cost = latency.border_cost
    print(f"[ort-cpu] {len(latency.group_ms)} group timings and the border fit in {time.perf_counter() - start:.0f} s "
          f"float model {latency.float_model_ms:.2f} ms; {len(latency.borders)} border tensors, "
          f"{cost.fixed_ms:.4f} ms each + {cost.per_melement_ms:.4f} ms per million elements (intercept {cost.offset_ms:+.4f} ms)",
          flush=True)
    start = time.perf_counter()
    curve = latency_curve(table, groups, run.prepared.group_bops, run.prepared.reference_bops, latency.latency_ms)
    print(f"[ort-cpu] latency greedy: {len(curve)} points in {time.perf_counter() - start:.1f} s", flush=True)
    selection = select_by_target(curve, lambda i: run.top1(curve[i].plan), fp32 - 1.0, what="top-1")
    one = {k: v[:1] for k, v in run.calib.arrays.items()}
    batch32 = {next(iter(one)): val[0][:32]}
    timings: dict[Plan, Timing] = {}

    def measure(plan: Plan) -> Timing:
        if plan not in timings:
            timings[plan] = timed(run.model_of(plan, deploy=True), one, spec)
        return timings[plan]

    homogeneous = [replace(p, latency_ms=latency.latency_ms(p.plan)) for p in
                   [steps.point_of(run.homogeneous(k), run.prepared, table) for k in (W8A16, W8A8)] +
                   [steps.point_of(Plan({g.id: float_of(g.highest) for g in analysis.groups}), run.prepared, table)]]
    curve, verified = verify_selection(curve, selection, homogeneous, measure, lambda plan: run.top1(plan) >= fp32 - 1.0)
    chosen = verified.point
    print(f"[ort-cpu] curve {len(curve)} points; search chose index {selection.index} after {selection.evaluations} top-1 "
          f"evaluations (estimate {selection.point.latency_ms:.2f} ms); the measured check chose index {verified.index} "
          f"({len(timings)} whole models timed): top-1 {run.top1(chosen.plan):.2f} (FP32 {fp32:.2f}); "
          f"groups {dict(Counter(label(c) for c in chosen.plan.values()))}", flush=True)
    mixed = max(range(len(curve)), key=lambda i: (len(crossing(curve[i].plan, latency.borders)), -i))
    probe = probe_plans(analysis.groups, integer_candidate, lambda g: float_of(g.highest))[1]
    rows = [("float", homogeneous[2].plan), ("W8A16", homogeneous[0].plan), ("W8A8", homogeneous[1].plan),
            (f"mixed@{mixed}", curve[mixed].plan), ("probe", probe), ("searched", selection.point.plan), ("chosen", chosen.plan)]
    print("\nadditive: float + group deltas (no borders); est: + borders (the model the search uses); "
          "mixed@i: the curve point crossing the most borders; probe: every other group of the first quarter float")
    print(f"\n{'config':<9} {'top-1':>6} {'b1 ms':>7} {'iqr':>5} {'additive':>8} {'err %':>6} {'est ms':>7} {'err %':>6} "
          f"{'borders':>7} {'b32 ms':>8}")
    measured = {}
    for name, plan in rows:
        deploy = run.model_of(plan, deploy=True)
        b1, b32 = measure(plan), median_ms(deploy, batch32, BATCH32)
        additive, estimate = latency.additive_ms(plan), latency.latency_ms(plan)
        measured[name] = (b1.median_ms, b32)
        print(f"{name:<9} {run.top1(plan):6.2f} {b1.median_ms:7.2f} {b1.iqr_ms:5.2f} {additive:8.2f} "
              f"{estimate_error(additive, b1.median_ms):6.1f} {estimate:7.2f} {estimate_error(estimate, b1.median_ms):6.1f} "
              f"{len(crossing(plan, latency.borders)):7d} {b32:8.1f}", flush=True)
    for base in ("float", "W8A8"):
        r1, r32 = (measured["chosen"][i] / measured[base][i] for i in (0, 1))
        print(f"chosen / {base}: batch 1 {r1:.2f}x, batch 32 {r32:.2f}x")


def systolic_part(model, calib, val, samples: int) -> None:
    run = Run("systolic-amed", model, calib, val)
    prepared = run.prepared
    shapes = {name: (1, *a.shape[1:]) for name, a in run.calib.arrays.items()}
    latency = SystolicLatency(layers_of(bops.concrete_graph(prepared.model, shapes), prepared.analysis), run.profile.latency)
    for bits in run.profile.kernels:
        print(f"[systolic] homogeneous {bits}: {latency.latency_ms(run.homogeneous(bits)):.3f} ms")
    groups = prepared.analysis.groups
    bops_curve = with_latency(pareto_curve(run.table, groups, prepared.group_bops, prepared.reference_bops), latency.latency_ms)
    lat_curve = latency_curve(run.table, groups, prepared.group_bops, prepared.reference_bops, latency.latency_ms)
    w8a8 = latency.latency_ms(run.homogeneous(W8A8))
    print(f"\n{'budget ms':>9} {'method':<16} {'sim ms':>7} {'rel BOPs':>8} {'pred dB':>7} {'meas dB':>7} {'top-1':>6}")
    fastest = lat_curve[-1].latency_ms
    for budget in (max(round(0.9 * w8a8, 2), fastest), max(round(0.75 * w8a8, 2), fastest)):
        points = {
            "greedy-BOPs": select_by_latency(bops_curve, budget).point,
            "greedy-latency": select_by_latency(lat_curve, budget).point,
        }
        settings = AmedSettings(samples=samples, seed=0, lam=0.1, budget_ms=budget, keep=3)
        result = amed_search(run.table, groups, prepared.group_bops, prepared.reference_bops, latency.latency_ms, settings)
        points["AMED"], _ = pick_measured(result.best, run.sqnr)
        for method, point in points.items():
            print(f"{budget:9.2f} {method:<16} {point.latency_ms:7.3f} {point.bops_rel:8.4f} {point.predicted_sqnr_db:7.2f} "
                  f"{run.sqnr(point.plan):7.2f} {run.top1(point.plan):6.2f}", flush=True)
        print(f"{'':9} AMED: {result.samples} samples, acceptance rate {result.acceptance_rate:.3f} "
              f"({result.accepted_moves}/{result.proposed_moves} layer moves), {result.seconds:.1f} s, "
              f"{len(result.best)} best samples measured", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calib", type=int, default=64)
    parser.add_argument("--val", type=int, default=1300)
    parser.add_argument("--amed-samples", type=int, default=5000)
    parser.add_argument("--parts", default="ort,systolic")
    args = parser.parse_args()
    if not imagenet.EFFICIENTNET.exists():
        print("../shared is absent: nothing to measure")
        return
    model = onnx.load(str(imagenet.EFFICIENTNET))
    images, labels = imagenet.validation_set()
    val = (images[: args.val], labels[: args.val])
    calib = imagenet.calibration_images(model, count=args.calib)
    fp32 = imagenet.top1(model, *val)
    print(f"EfficientNet-Lite0, calib {args.calib} imagenet/samples, top-1 on {args.val} imagenet/val: FP32 {fp32:.2f}", flush=True)
    if "ort" in args.parts:
        ort_part(model, calib, val, fp32)
    if "systolic" in args.parts:
        systolic_part(model, calib, val, args.amed_samples)


if __name__ == "__main__":
    main()
