"""Issue 12 benchmark: greedy, MixQuant and AdaQAT at the same BOPs budgets, in one run.

For each model (EfficientNet-Lite0: calibration on the first 256 of imagenet/samples, top-1 on
the 1300 imagenet/val; the MNIST CNN: calibration on the first 256 MNIST test digits, top-1
on the other 9744) and profile (npu, research), each strategy picks the point at or just
below each budget; the row gives its relative BOPs, predicted and measured output SQNR
(calibration set), top-1, the strategy's own wall time, the phase-1 time it depends on, and
the number of ONNX Runtime evaluations (phase-1 (group, candidate) runs plus whole-model
measurements; top-1 and the final SQNR check are not counted, every strategy pays them).

Strategies: greedy (phase 1 + Pareto walk); mixquant (QE table, no phase 1); adaqat (per
group, L_task predicted from phase 1: the default); adaqat-net-meas (one (N_w, N_a) pair for
the network, the paper's setting, L_task measured with ONNX Runtime on the calibration set).

Phase 1 is resumable (store in the system temp folder); its wall time is recorded on the run
that measured it and reused when a later run resumes it.

Run: flock /work/bench.lock python bench/strategies.py [--models efficientnet,mnist] [--profiles npu,research]
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).parent))
import imagenet  # noqa: E402

from onnxmp import calib_data, inputs, pipeline, run_records, steps  # noqa: E402
from onnxmp.phase1.measure import measure  # noqa: E402
from onnxmp.phase1.sensitivity import Phase1Context, sensitivity  # noqa: E402
from onnxmp.records import Strategy, noise_ratio  # noqa: E402
from onnxmp.search import STRATEGIES, SearchSpace, StrategyOptions, select_by_bops  # noqa: E402
from onnxmp.search.mixquant import quantization_errors  # noqa: E402

BUDGETS = {"npu": (0.375, 0.3), "research": (0.375, 0.3, 0.25)}
VARIANTS = {  # label -> (registry name, options without the budget, needs phase 1)
    "greedy": ("greedy", {}, True),
    "mixquant": ("mixquant", {}, False),
    "adaqat": ("adaqat", {}, True),
    "adaqat-net-meas": ("adaqat", {"per_network": True, "measured": True}, False),
}
MNIST = imagenet.SHARED / "models" / "mnist_cnn_pytorch.onnx"


@dataclass(frozen=True)
class Case:
    name: str
    model: onnx.ModelProto
    calib: calib_data.CalibrationSet
    images: np.ndarray
    labels: np.ndarray


def efficientnet(num_calib: int = 256) -> Case | None:
    setup = imagenet.efficientnet_setup()
    if setup is None:
        return None
    model, calib, images, labels = setup
    if num_calib != 256:  # the reduced run: fewer calibration images, same validation set
        calib = imagenet.calibration_images(model, count=num_calib)
    return Case(f"efficientnet_lite0-c{num_calib}", model, calib, images, labels)


def mnist() -> Case:
    def idx(name: str, offset: int) -> np.ndarray:
        with gzip.open(imagenet.SHARED / "mnist" / name) as f:
            return np.frombuffer(f.read(), np.uint8, offset=offset)

    images = ((idx("t10k-images-idx3-ubyte.gz", 16).reshape(-1, 1, 28, 28) / 255.0 - 0.1307) / 0.3081).astype(np.float32)
    labels = idx("t10k-labels-idx1-ubyte.gz", 8).astype(np.int64)
    model = onnx.load(str(MNIST))
    calib = calib_data.validate({"input": images[:256]}, calib_data.model_inputs(model), "mnist test[:256]")
    return Case("mnist_cnn", model, calib, images[256:], labels[256:])


def phase1(case: Case, profile: str, calibrated: run_records.Calibrated, settings) -> tuple:
    """The phase-1 table, its wall time (measured now or recorded when it was), its evaluations."""
    prepared = calibrated.prepared
    folder = imagenet.CACHE / f"strategies-{case.name}-{profile}"
    store = pipeline.open_store(folder, prepared, settings)
    timing = folder / f"phase1-seconds-{store.key[:16]}.json"
    start = time.perf_counter()
    context = Phase1Context(prepared.model, prepared.analysis, calibrated.encodings, calibrated.calib,
                            calibrated.reference, settings.batch_size, prepared.profile.quantize_bias)
    table = sensitivity(context, store=store)
    seconds = time.perf_counter() - start
    if timing.exists():
        seconds = json.loads(timing.read_text())["seconds"]
    else:
        timing.write_text(json.dumps({"seconds": seconds}))
    return table, seconds, sum(len(g.candidates) for g in prepared.analysis.groups)


def run_profile(case: Case, profile: str, variants: list[str]) -> list[tuple]:
    settings = run_records.Settings()
    model, loaded, calib = inputs.load_inputs(case.model, profile, case.calib)
    prepared = steps.prepare(model, loaded, calib)
    calibrated = steps.calibrate_ranges(prepared, calib, settings)
    encodings, reference = calibrated.encodings, calibrated.reference
    start = time.perf_counter()
    weights = {w: prepared.graph.constant(w) for g in prepared.analysis.groups for w in g.weights}
    errors = quantization_errors(prepared.analysis.groups, weights, encodings)
    qe_seconds = time.perf_counter() - start
    table, phase1_seconds, phase1_evals = phase1(case, profile, calibrated, settings)
    measured: dict = {}
    asked: set = set()  # the plans the running strategy measured (cached ones too: a lone run pays them)

    def noise(plan) -> float:
        asked.add(plan)
        if plan not in measured:
            measured[plan] = measure(steps.simulate(prepared, plan, encodings), calib, reference, batch_size=16).sqnr_db
        return noise_ratio(measured[plan])

    space = SearchSpace(prepared.analysis.groups, prepared.group_bops, prepared.reference_bops, table, errors, noise)
    top1: dict = {}
    rows = []
    print(f"[{case.name}/{profile}] {len(prepared.analysis.groups)} groups, phase 1 {phase1_seconds:.1f} s "
          f"({phase1_evals} evaluations), QE table {qe_seconds:.2f} s", flush=True)
    for label in variants:
        name, extra, needs_phase1 = VARIANTS[label]
        for budget in BUDGETS[profile]:
            asked.clear()
            start = time.perf_counter()
            curve = STRATEGIES[Strategy(name)](space, StrategyOptions(target_bops=budget, **extra))
            point = select_by_bops(curve, budget).point
            seconds = time.perf_counter() - start + (qe_seconds if name == "mixquant" else 0.0)
            evaluations = (phase1_evals if needs_phase1 else 0) + len(asked)
            sqnr_db = -10 * np.log10(noise(point.plan)) if noise(point.plan) > 0 else float("inf")
            if point.plan not in top1:
                top1[point.plan] = imagenet.top1(steps.simulate(prepared, point.plan, encodings), case.images, case.labels)
            row = (case.name, profile, label, budget, point.bops_rel, point.predicted_sqnr_db, sqnr_db, top1[point.plan],
                   seconds, phase1_seconds if needs_phase1 else 0.0, evaluations)
            print("  " + _format(row), flush=True)
            rows.append(row)
    return rows


def _format(row: tuple) -> str:
    model, profile, label, budget, bops, predicted, sqnr_db, acc, seconds, p1, evaluations = row
    return (f"{model:<18} {profile:<9} {label:<16} {budget:6.3f} {bops:7.4f} {predicted:8.2f} {sqnr_db:8.2f} "
            f"{acc:7.2f} {seconds:9.2f} {p1:8.1f} {evaluations:6d}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="efficientnet,mnist")
    parser.add_argument("--profiles", default="npu,research")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--num-calib", type=int, default=256, help="EfficientNet calibration images (reduced run: 64)")
    args = parser.parse_args()
    cases = {"efficientnet": lambda: efficientnet(args.num_calib), "mnist": mnist}
    rows = []
    for model_name in args.models.split(","):
        case = cases[model_name]()
        if case is None:
            continue
        fp32 = imagenet.top1(case.model, case.images, case.labels)
        print(f"{case.name}: FP32 top-1 {fp32:.2f}", flush=True)
        for profile in args.profiles.split(","):
            rows += run_profile(case, profile, args.variants.split(","))
    print(f"\n{'model':<18} {'profile':<9} {'strategy':<16} {'budget':>6} {'BOPs':>7} {'pred dB':>8} {'meas dB':>8} "
          f"{'top-1':>7} {'search s':>9} {'phase1 s':>8} {'ORT ev':>6}")
    for row in rows:
        print(_format(row))


if __name__ == "__main__":
    main()
