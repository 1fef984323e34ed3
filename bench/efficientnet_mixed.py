"""Issue 3 benchmark: mixed precision vs homogeneous on EfficientNet-Lite0, in one run.

For each profile (npu: W8A16/W8A8/W4A8; research: down to W4A4), calibrates on the first 256
images of imagenet/samples, runs phase 1 (resumable: the store lives in the system temp
folder), builds the Pareto curve, and scores top-1 on all 1300 imagenet/val images for
FP32, the homogeneous points and the mixed-precision points at the issue's BOPs budgets.
Then, for the target "at most 1 point of top-1 below FP32", compares sequential, binary
and hybrid search over the npu curve (accuracy evaluations counted per method).

Run: python bench/efficientnet_mixed.py [--profiles npu,research] [--skip-search]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import onnx

sys.path.insert(0, str(Path(__file__).parent))
import imagenet  # noqa: E402

from onnxmp import inputs, run_records, run_store, steps  # noqa: E402
from onnxmp.phase1.sensitivity import Phase1Context, sensitivity  # noqa: E402
from onnxmp.records import Candidate  # noqa: E402
from onnxmp.search import SearchMethod, select_by_bops, select_by_target  # noqa: E402
from onnxmp.search.greedy import pareto_curve  # noqa: E402

PLAN = {
    "npu": {"homogeneous": ["W8A16", "W8A8", "W4A8"], "budgets": [0.5, 0.375, 0.3]},
    "research": {"homogeneous": ["W8A8", "W6A8", "W6A6", "W4A8", "W4A4"], "budgets": [0.375, 0.28125, 0.25]},
}
AIMET = {0.5: 82.77, 0.375: 81.15, 0.3: 75.23}  # aimet-onnx 2.42.0, measured on this setup (issue 3)


def run_profile(name: str, model: onnx.ModelProto, calib, images, labels, fp32: float) -> tuple[list, dict]:
    settings = run_records.Settings()
    model_, profile, calib = inputs.load_inputs(model, name, calib)
    prepared = steps.prepare(model_, profile, calib)
    calibrated = steps.calibrate_ranges(prepared, calib, settings)
    encodings = calibrated.encodings
    store = run_store.open_store(imagenet.CACHE / f"phase1-{name}", prepared, settings)
    start = time.perf_counter()
    context = Phase1Context(prepared.model, prepared.analysis, encodings, calib, calibrated.reference,
                            settings.batch_size, profile.quantize_bias)
    table = sensitivity(context, store=store)
    phase1 = time.perf_counter() - start
    curve = pareto_curve(table, prepared.analysis.groups, prepared.group_bops, prepared.reference_bops)
    evaluations = sum(len(g.candidates) for g in prepared.analysis.groups)
    print(f"[{name}] {len(prepared.analysis.groups)} groups, {evaluations} phase-1 evaluations, "
          f"phase 1 {phase1:.0f} s (0 if resumed), curve of {len(curve)} points", flush=True)

    def row(label: str, plan, kind: str):
        point = steps.point_of(plan, prepared, table)
        measured = steps.measured_sqnr(calibrated, plan, settings.batch_size)
        acc = imagenet.top1(steps.simulate(prepared, plan, encodings), images, labels)
        print(f"  {label:<14} {kind:<12} BOPs {point.bops_rel:.4f}  top-1 {acc:6.2f}", flush=True)
        return (name, label, kind, point.bops_rel, point.predicted_sqnr_db, measured, acc)

    rows = [(name, "FP32", "float", 1.0, math.inf, math.inf, fp32)]
    for bits in PLAN[name]["homogeneous"]:
        rows.append(row(bits, run_records.homogeneous_plan(prepared.analysis, Candidate.parse(bits), profile), "homogeneous"))
    for budget in PLAN[name]["budgets"]:
        rows.append(row(f"MP@{budget:g}", select_by_bops(curve, budget).point.plan, "mixed"))
    context = {"prepared": prepared, "encodings": encodings, "curve": curve}
    return rows, context


def search_comparison(context: dict, images, labels, fp32: float) -> None:
    prepared, encodings, curve = context["prepared"], context["encodings"], context["curve"]
    cache: dict[int, float] = {}

    def accuracy(i: int) -> float:
        if i not in cache:
            cache[i] = imagenet.top1(steps.simulate(prepared, curve[i].plan, encodings), images, labels)
        return cache[i]

    n = len(curve)
    bound = math.ceil(math.log2(n)) + 2
    print(f"\nTarget: top-1 >= FP32 - 1 = {fp32 - 1:.2f} on the npu curve ({n} points; bound ceil(log2 n)+2 = {bound})")
    print(f"{'method':<11} {'index':>5} {'BOPs':>7} {'top-1':>7} {'evaluations':>12}")
    for method in (SearchMethod.HYBRID, SearchMethod.BINARY, SearchMethod.SEQUENTIAL):
        selection = select_by_target(curve, accuracy, fp32 - 1, method=method, what="top-1")
        print(f"{method.value:<11} {selection.index:5d} {selection.point.bops_rel:7.4f} "
              f"{cache[selection.index]:7.2f} {selection.evaluations:12d}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--profiles", default="npu,research")
    parser.add_argument("--skip-search", action="store_true")
    args = parser.parse_args()
    setup = imagenet.efficientnet_setup()
    if setup is None:
        return
    model, calib, images, labels = setup
    fp32 = imagenet.top1(model, images, labels)
    all_rows, contexts = [], {}
    for name in args.profiles.split(","):
        rows, contexts[name] = run_profile(name, model, calib, images, labels, fp32)
        all_rows += rows
    print("\nEfficientNet-Lite0, calib 256 imagenet/samples, top-1 on 1300 imagenet/val")
    print(f"{'profile':<9} {'config':<14} {'kind':<12} {'rel BOPs':>8} {'pred SQNR':>9} {'meas SQNR':>9} {'top-1 %':>8} {'AIMET':>7}")
    for profile, label, kind, rel, predicted, measured, acc in all_rows:
        aimet = AIMET.get(float(label[3:])) if profile == "npu" and label.startswith("MP@") else None
        print(f"{profile:<9} {label:<14} {kind:<12} {rel:8.4f} {predicted:9.2f} {measured:9.2f} {acc:8.2f} "
              f"{'' if aimet is None else f'{aimet:7.2f}'}")
    if "npu" in contexts and not args.skip_search:
        search_comparison(contexts["npu"], images, labels, fp32)


if __name__ == "__main__":
    main()
