"""Issue 11 benchmark: AdaRound inside phase 1 and phase 2 on EfficientNet-Lite0, in one run.

Calibrates on the first --calib images of imagenet/samples (default 256), scores top-1 on the
first --val images of imagenet/val (default all 1300), npu profile. Prints, for nearest and
AdaRound weights: W4A8 everywhere, then (unless --skip-mp) phase 1 (time beside AdaRound's),
the greedy curve and MP@0.375 / MP@0.3 with predicted and measured SQNR. Also AdaRound's
wall and CPU time for every weight tensor at 4 bits and the peak RSS after it, and the
layer-input variants (float network vs quantized prefix) at W4A8.

Run: flock /work/bench.lock python bench/adaround.py [--calib 256] [--val 1300] [--skip-mp] [--inputs both]
     [--skip-nearest] [--fresh] [--digits | --mnist]   (the shipped digits CNN, or ../shared's MNIST CNN: calibration = first 256
     of MNIST test, top-1 on the other 9744)

"peak RSS" is the process's peak so far; "AdaRound's own peak" is the peak resident size
while AdaRound ran (the kernel's high-water mark, reset just before it: /proc/self/clear_refs).
The validation images (0.77 GB for 1300) are read from the bench cache for each score and
dropped after it, so the resident figures are onnxmp's, not the bench's validation set.

`--variants nearest,nearest+bc,adaround,adaround+bc` prints only those W4A8 rows (bias
correction, README "Bias correction"); AdaRound at 4 bits, inputs from the quantized prefix,
results cached under the bench cache (a rerun reads them back).
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import imagenet  # noqa: E402
import onnx  # noqa: E402

from onnxmp import calib_data, inputs, plan_rounding, run_records, run_store, runtime, steps  # noqa: E402
from onnxmp.hw_profile import WeightRounding  # noqa: E402
from onnxmp.phase1.sensitivity import Phase1Context, sensitivity  # noqa: E402
from onnxmp.records import Candidate  # noqa: E402
from onnxmp.run_records import AdaRoundInputs  # noqa: E402
from onnxmp.search import select_by_bops  # noqa: E402
from onnxmp.search.greedy import pareto_curve  # noqa: E402
from onnxmp.store import ResultStore  # noqa: E402

BUDGETS = {"npu": (0.375, 0.3), "research": (0.25,)}
TARGETS = {"W4A8": 79.0, "MP@0.375": 82.2, "MP@0.3": 81.0, "MP@0.25": 81.0}


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> None:
    """Restart the kernel's high-water mark of this process's resident size (Linux >= 4.0)."""
    Path("/proc/self/clear_refs").write_text("5")


def peak_rss_since_reset_mib(field: str = "VmHWM") -> float:
    status = Path("/proc/self/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith(f"{field}:")).split()[1]) / 1024


def resident_mib() -> float:
    """The resident size now (what a phase starts from: its own peak minus this is what it added)."""
    return peak_rss_since_reset_mib("VmRSS")


def adaround(calibrated, settings, inputs_mode: AdaRoundInputs, cache: Path):
    """AdaRound every weight up to 6 bits (W8 stays nearest); returns (calibrated, wall s, cpu s)."""
    options = replace(steps.ADAROUND, inputs=inputs_mode)
    print(f"resident before AdaRound {resident_mib():.0f} MiB", flush=True)
    reset_peak_rss()
    start, cpu = time.perf_counter(), time.process_time()
    rounded = steps.adaround(calibrated, settings, cache / inputs_mode.value, options=options)
    return rounded, time.perf_counter() - start, time.process_time() - cpu


VARIANTS = ("nearest", "nearest+bc", "adaround", "adaround+bc", "nearest+oa", "nearest+oa+bc", "adaround+oa",
            "adaround+oa+bc")  # +bcq: bias correction from the quantized prefix's means; @float: all inputs float


def variants(nearest, settings, names: list[str], cache: Path, score) -> None:
    """The W4A8 row of each named variant: rounding, bias correction (+bc), output-aware range (+oa)."""
    for name in names:
        base, _, mode = name.partition("@")
        parts = base.split("+")
        rounding = WeightRounding.ADAROUND if parts[0] == "adaround" else WeightRounding.NEAREST
        corrected = "bc" in parts or "bcq" in parts
        chosen = replace(settings, weight_rounding=rounding, bias_correction=corrected, output_range="oa" in parts)
        inputs_mode = AdaRoundInputs(mode or "quantized")
        bias_inputs = AdaRoundInputs.QUANTIZED if "bcq" in parts else AdaRoundInputs.FLOAT
        options = replace(steps.ADAROUND, max_bits=4, inputs=inputs_mode, bias_inputs=bias_inputs)
        start, cpu = time.perf_counter(), time.process_time()
        calibrated = steps.adaround(nearest, chosen, cache / inputs_mode.value, options=options)
        print(f"{name}: {len(calibrated.rounded)} AdaRounded, {len(calibrated.biases)} corrected biases, "
              f"wall {time.perf_counter() - start:.0f} s, CPU {time.process_time() - cpu:.0f} s (0 if cached)", flush=True)
        score(calibrated, name)


def mixed(calibrated, settings, label: str, val, root: Path, refine: bool = True) -> list[tuple]:
    """Phase 1, the greedy curve and the MP points of `calibrated` (its rounding stitched in);
    with AdaRound and `refine`, each point again with its plan's weights rounded on its own network."""
    prepared = calibrated.prepared
    print(f"resident before phase 1 {resident_mib():.0f} MiB", flush=True)
    reset_peak_rss()
    start = time.perf_counter()
    context = Phase1Context(prepared.model, prepared.analysis, calibrated.encodings, calibrated.calib,
                            calibrated.reference, settings.batch_size, prepared.profile.quantize_bias, calibrated.rounded, calibrated.biases)
    suffix = "" if prepared.profile.name == "npu" else f"-{prepared.profile.name}"
    store = run_store.open_store(root / f"phase1-adaround-{label}{suffix}", prepared, settings)
    table = sensitivity(context, store=store)
    print(f"[{label}] phase 1 {time.perf_counter() - start:.0f} s (0 if resumed), "
          f"its own peak RSS {peak_rss_since_reset_mib():.0f} MiB", flush=True)
    curve = pareto_curve(table, prepared.analysis.groups, prepared.group_bops, prepared.reference_bops)
    rows = []
    for budget in BUDGETS[prepared.profile.name]:
        plan = select_by_bops(curve, budget).point.plan
        point = steps.point_of(plan, prepared, table)
        measured = steps.measured_sqnr(calibrated, plan, settings.batch_size)
        acc = imagenet.top1(steps.simulate(prepared, plan, calibrated.encodings, calibrated.rounded, calibrated.biases), *val())
        rows.append((label, f"MP@{budget:g}", point.bops_rel, point.predicted_sqnr_db, measured, acc))
        print(f"  {rows[-1]}", flush=True)
        if calibrated.rounded and refine:  # the chosen plan AdaRounded again on its own network (plan_rounding)
            reset_peak_rss()
            start = time.perf_counter()
            refined = plan_rounding.round_plan(calibrated, plan, settings, root / "adaround-plans")
            seconds, peak = time.perf_counter() - start, peak_rss_since_reset_mib()
            acc = imagenet.top1(steps.simulate(prepared, plan, refined.encodings, refined.rounded, refined.biases), *val())
            rows.append((f"{label}+plan", f"MP@{budget:g}", point.bops_rel, point.predicted_sqnr_db,
                         steps.measured_sqnr(refined, plan, settings.batch_size), acc))
            print(f"  {rows[-1]} (plan AdaRound {seconds:.0f} s, 0 if cached; its own peak RSS {peak:.0f} MiB)", flush=True)
    return rows


def digits(names: list[str] | None = None) -> None:
    """The same comparison on the shipped digits CNN (models/), top-1 on its 500 held-out digits
    (with `names`, only the W4A8 rows of those variants, every weight width up to 6 bits)."""
    import numpy as np
    import onnx

    models = Path(__file__).resolve().parents[1] / "models"
    model = onnx.load(str(models / "digits_cnn.onnx"))
    calib = calib_data.load_arrays(models / "digits_calib.npz", model)
    with np.load(models / "digits_eval.npz") as data:
        small_model("digits CNN", model, calib, data["image"], data["label"], names)


def mnist(names: list[str] | None = None) -> None:
    """The same comparison on ../shared's MNIST CNN: calibration = first 256 of MNIST test, top-1 on the rest."""
    import strategies

    case = strategies.mnist()
    small_model("MNIST CNN", case.model, case.calib, case.images, case.labels, names)


def small_model(name: str, model, calib, images, labels, names: list[str] | None = None) -> None:
    """Nearest vs AdaRound at W4A8 (on its own network, as `--bits` runs) and MP@0.375 / MP@0.3
    (on the float network as searches do, then "+plan": the chosen plan on its own network), npu profile."""
    import numpy as np

    settings = run_records.Settings(weight_rounding=WeightRounding.ADAROUND)
    prepared = steps.prepare(model, inputs.load_inputs(model, "npu", calib)[1], calib)
    nearest = steps.calibrate_ranges(prepared, calib, settings)
    w4a8 = run_records.homogeneous_plan(prepared.analysis, Candidate(4, 8), prepared.profile)
    if names:
        def score(calibrated, label: str) -> None:
            qdq = steps.simulate(prepared, w4a8, calibrated.encodings, calibrated.rounded, calibrated.biases)
            acc = 100.0 * float(np.mean(runtime.session(qdq).run(None, {"image": images})[0].argmax(axis=1) == labels))
            print(f"{label:<22} W4A8 measured {steps.measured_sqnr(calibrated, w4a8, 16):6.2f} dB top-1 {acc:6.2f}", flush=True)

        variants(nearest, settings, names, Path(tempfile.mkdtemp()), score)
        return
    start = time.perf_counter()
    rounded = steps.adaround(nearest, settings, None)
    print(f"{name}: AdaRound {time.perf_counter() - start:.1f} s for {len(rounded.rounded)} weight tensors", flush=True)

    def top1(calibrated, plan) -> float:
        qdq = steps.simulate(prepared, plan, calibrated.encodings, calibrated.rounded, calibrated.biases)
        sess = runtime.session(qdq)
        feed = sess.get_inputs()[0].name
        logits = np.concatenate([sess.run(None, {feed: images[i : i + 500]})[0] for i in range(0, len(images), 500)])
        return 100.0 * float(np.mean(logits.argmax(axis=1) == labels))

    for label, calibrated in (("nearest", nearest), ("adaround", rounded)):
        context = Phase1Context(prepared.model, prepared.analysis, calibrated.encodings, calib, calibrated.reference,
                                settings.batch_size, prepared.profile.quantize_bias, calibrated.rounded, calibrated.biases)
        table = sensitivity(context, store=ResultStore(Path(tempfile.mkdtemp()) / "p1.jsonl", name))
        curve = pareto_curve(table, prepared.analysis.groups, prepared.group_bops, prepared.reference_bops)
        plans = [("W4A8", run_records.homogeneous_plan(prepared.analysis, Candidate(4, 8), prepared.profile))]
        plans += [(f"MP@{b:g}", select_by_bops(curve, b).point.plan) for b in BUDGETS["npu"]]
        for config, plan in plans:
            point = steps.point_of(plan, prepared, table)
            weightings = [(label, calibrated)]
            if label == "adaround" and config == "W4A8":  # a --bits run rounds on its own network
                weightings = [(label, steps.adaround(nearest, settings, None, options=steps.ADAROUND_HOMOGENEOUS, plan=plan))]
            elif label == "adaround":  # a search: the chosen plan rounded again on its own network
                weightings.append(("+plan", plan_rounding.round_plan(calibrated, plan, settings, Path(tempfile.mkdtemp()))))
            for name, weights in weightings:
                measured = steps.measured_sqnr(weights, plan, settings.batch_size)
                print(f"{name:<9} {config:<9} BOPs {point.bops_rel:.4f} predicted {point.predicted_sqnr_db:6.2f} dB "
                      f"measured {measured:6.2f} dB top-1 {top1(weights, plan):6.2f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calib", type=int, default=256)
    parser.add_argument("--val", type=int, default=1300)
    parser.add_argument("--skip-mp", action="store_true")
    parser.add_argument("--fresh", action="store_true", help="AdaRound and phase 1 recomputed (stores in a new temporary folder)")
    parser.add_argument("--skip-nearest", action="store_true", help="no rows with nearest rounding (measured before)")
    parser.add_argument("--inputs", choices=["float", "quantized", "both"], default="both")
    parser.add_argument("--profile", choices=sorted(BUDGETS), default="npu",
                        help="npu: MP@0.375 and MP@0.3; research: MP@0.25 (W4 and W6 AdaRounded)")
    parser.add_argument("--digits", action="store_true", help="the shipped digits CNN instead (no ../shared needed)")
    parser.add_argument("--variants", help=f"comma-separated W4A8 rows only, of {','.join(VARIANTS)}")
    parser.add_argument("--mnist", action="store_true", help="../shared's MNIST CNN instead")
    args = parser.parse_args()
    names = args.variants.split(",") if args.variants else None
    if args.digits or args.mnist:
        (digits if args.digits else mnist)(names)
        return
    if not imagenet.EFFICIENTNET.exists():
        print("../shared is absent: nothing to measure")
        return
    model = onnx.load(str(imagenet.EFFICIENTNET))
    calib = imagenet.calibration_images(model)
    calib = calib_data.validate({"input": calib.arrays["input"][: args.calib].copy()}, calib_data.model_inputs(model), "samples")

    def val():
        """The first --val validation images and labels, read for one score (not held between scores)."""
        images, labels = imagenet.validation_set()
        return images[: args.val], labels[: args.val]

    print(f"EfficientNet-Lite0, calibration {args.calib} imagenet/samples, top-1 on {args.val} imagenet/val", flush=True)
    settings = run_records.Settings(weight_rounding=WeightRounding.ADAROUND)
    model_, profile, calib = inputs.load_inputs(model, args.profile, calib)
    prepared = steps.prepare(model_, profile, calib)
    nearest = steps.calibrate_ranges(prepared, calib, settings)
    w4a8 = run_records.homogeneous_plan(prepared.analysis, Candidate(4, 8), profile)
    print(f"rss after calibration {peak_rss_mib():.0f} MiB (peak so far), resident after calibration "
          f"{resident_mib():.0f} MiB", flush=True)
    rows = []

    def score(calibrated, label: str) -> None:
        measured = steps.measured_sqnr(calibrated, w4a8, settings.batch_size)
        qdq = steps.simulate(prepared, w4a8, calibrated.encodings, calibrated.rounded, calibrated.biases)
        rows.append((label, "W4A8", 0.25, float("nan"), measured, imagenet.top1(qdq, *val())))
        print(f"  {rows[-1]}", flush=True)

    root = Path(tempfile.mkdtemp()) if args.fresh else Path(imagenet.CACHE)
    cache = root / f"adaround-{args.calib}"  # results are keyed by weight, bits, scale, data: profiles share them
    if names:
        variants(nearest, settings, names, cache, score)
    elif not args.skip_nearest:
        score(nearest, "nearest")
    default = steps.ADAROUND.inputs
    modes = [AdaRoundInputs(args.inputs)] if args.inputs != "both" else [default, *(m for m in AdaRoundInputs if m is not default)]
    for k, mode in enumerate(modes if not names else []):  # the default variant first; each with its MP points (unless --skip-mp)
        rounded, wall, cpu = adaround(nearest, settings, mode, cache)
        print(f"AdaRound ({mode.value} inputs), {len(rounded.rounded)} weight tensors at 4 bits: "
              f"wall {wall:.0f} s, CPU {cpu:.0f} s (0 if cached), AdaRound's own peak RSS {peak_rss_since_reset_mib():.0f} MiB, "
              f"peak RSS {peak_rss_mib():.0f} MiB", flush=True)
        score(rounded, f"adaround-{mode.value}")
        if not args.skip_mp:
            if k == 0 and not args.skip_nearest:
                rows += mixed(nearest, settings, "nearest", val, root)
            rows += mixed(rounded, settings, f"adaround-{mode.value}", val, root)
    print(f"\n{'rounding':<20} {'config':<9} {'rel BOPs':>8} {'pred SQNR':>9} {'meas SQNR':>9} {'top-1 %':>8} {'target':>7}")
    for label, config, rel, predicted, measured, acc in rows:
        target = TARGETS.get(config, "") if label.startswith("adaround") else ""
        print(f"{label:<20} {config:<9} {rel:8.4f} {predicted:9.2f} {measured:9.2f} {acc:8.2f} {target:>7}")


if __name__ == "__main__":
    main()
