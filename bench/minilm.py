"""Issue 14 benchmark: all-MiniLM-L6-v2 on STS Benchmark, every number in one run.

Calibration: stsb_minilm_calib.npz (256 sentences, length 41); score: Spearman x100 on
stsb_minilm_test.npz (1379 pairs), see bench/stsb.py. Prints:
1. FP32, ONNX Runtime quantize_static (QDQ, per-channel, MinMax, int8; default op types and
   MatMul only, calibrated on the same sentences) and quantize_dynamic (defaults);
2. onnxmp homogeneous points on npu, npu-transformer and research (simulated QDQ models);
3. phase 1 on the research profile (time, peak RSS), the npu table taken from it (same
   groups, same encodings: npu's kernels are a subset), mixed precision at relative BOPs
   0.375 and 0.3 on both, with predicted and measured output SQNR;
4. ONNX Runtime CPU latency (2 threads, QDQ fusions on) at sequence 128, batch 1 and 32:
   float, onnxmp W8A8 (npu, the emitted integer model) and quantize_dynamic.

Run: flock /work/bench.lock python bench/minilm.py [--skip-latency] [--skip-mixed] [--latency-only]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnxruntime import quantization as ortq

sys.path.insert(0, str(Path(__file__).parent))
import stsb  # noqa: E402

from onnxmp import inputs, pipeline, run_records, runtime, steps  # noqa: E402
from onnxmp.hw_profile import ActivationClipping  # noqa: E402
from onnxmp.passes.insert_qdq import WeightStorage, insert_quantizers, quantizers_for  # noqa: E402
from onnxmp.phase1.sensitivity import Phase1Context, sensitivity  # noqa: E402
from onnxmp.records import Candidate, SensitivityTable  # noqa: E402
from onnxmp.search import select_by_bops  # noqa: E402
from onnxmp.search.greedy import pareto_curve  # noqa: E402

HOMOGENEOUS = {"npu": ["W8A16", "W8A8", "W4A8"], "npu-transformer": ["W8A16", "W8A8"], "research": ["W6A8", "W6A6"]}
CLIPPED = {"npu": ["W8A8", "W4A8"], "npu-transformer": ["W8A8"]}  # again with --activation-clipping output
BUDGETS = (0.375, 0.3)
SEQ = 128
THREADS = 2
RUNS = {1: (3, 30), 32: (1, 5)}  # batch -> (warm-ups, timed runs)
SETTINGS = run_records.Settings()
CLIPPING = run_records.Settings(activation_clipping=ActivationClipping.OUTPUT)


class _Reader(ortq.CalibrationDataReader):
    """The calibration sentences in batches of 16, for ONNX Runtime's calibrator."""

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        n = len(arrays["input_ids"])
        self._batches = iter([{k: v[i:i + 16] for k, v in arrays.items()} for i in range(0, n, 16)])

    def get_next(self):
        return next(self._batches, None)


def ort_baselines(work: Path, data) -> list[tuple]:
    rows = []
    for label, op_types in (("ORT quantize_static (default ops)", None), ("ORT quantize_static (MatMul)", ["MatMul"])):
        out = work / f"ort_static_{'all' if op_types is None else 'matmul'}.onnx"
        ortq.quantize_static(
            str(stsb.MODEL), str(out), _Reader(dict(stsb.calibration().arrays)), quant_format=ortq.QuantFormat.QDQ,
            per_channel=True, activation_type=ortq.QuantType.QUInt8, weight_type=ortq.QuantType.QInt8,
            calibrate_method=ortq.CalibrationMethod.MinMax, op_types_to_quantize=op_types,
        )
        rows.append(("ort", label, None, None, None, stsb.score(str(out), data, simulate=False)))
        print(f"  {label}: {rows[-1][-1]:.2f}", flush=True)
    out = work / "ort_dynamic.onnx"
    ortq.quantize_dynamic(str(stsb.MODEL), str(out), weight_type=ortq.QuantType.QInt8)
    rows.append(("ort", "ORT quantize_dynamic", None, None, None, stsb.score(str(out), data, simulate=False)))
    print(f"  ORT quantize_dynamic: {rows[-1][-1]:.2f}", flush=True)
    return rows


def setup(profile_name: str, calib, settings=SETTINGS, store_dir: Path | None = None) -> run_records.Calibrated:
    """Calibrated ranges; with output clipping, tightened (measured once, kept in `store_dir`)."""
    model, profile, calib = inputs.load_inputs(str(stsb.MODEL), profile_name, calib)
    calibrated = steps.calibrate_ranges(steps.prepare(model, profile, calib), calib, settings)
    if store_dir is None:
        return calibrated
    start = time.perf_counter()
    clipped = pipeline.clip(calibrated, settings, store_dir / profile_name)
    moved = sum(clipped.encodings[k] != e for k, e in calibrated.encodings.items())
    print(f"[{profile_name}] output-aware clipping in {time.perf_counter() - start:.0f} s, {moved} ranges moved", flush=True)
    return clipped


def row(name: str, label: str, plan, calibrated: run_records.Calibrated, data, table=None) -> tuple:
    prepared = calibrated.prepared
    point = steps.point_of(plan, prepared, table)
    measured = steps.measured_sqnr(calibrated, plan, SETTINGS.batch_size)
    score = stsb.score(steps.simulate(prepared, plan, calibrated.encodings), data)
    print(f"  {name:<16} {label:<8} BOPs {point.bops_rel:.4f} pred {point.predicted_sqnr_db:6.2f} "
          f"meas {measured:6.2f} Spearman {score:.2f}", flush=True)
    return (name, label, point.bops_rel, point.predicted_sqnr_db, measured, score)


def homogeneous_rows(name: str, calib, data, store_dir: Path) -> list[tuple]:
    calibrated = setup(name, calib)
    prepared = calibrated.prepared
    groups = prepared.analysis.groups
    print(f"[{name}] {len(groups)} groups ({sum(not g.weights for g in groups)} without weights), "
          f"{len(prepared.analysis.skipped)} ops left in float, MACs/sample {sum(prepared.macs.values()) / 1e6:.1f} M", flush=True)
    rows = [row(name, bits, run_records.homogeneous_plan(prepared.analysis, Candidate.parse(bits), prepared.profile),
                calibrated, data) for bits in HOMOGENEOUS[name]]
    if name in CLIPPED:
        clipped = setup(name, calib, CLIPPING, store_dir / "clipping")
        rows += [row(name, f"{bits} clip", run_records.homogeneous_plan(prepared.analysis, Candidate.parse(bits), prepared.profile),
                     clipped, data) for bits in CLIPPED[name]]
    return rows


def mixed_rows(calib, data, store_dir: Path) -> list[tuple]:
    research = setup("research", calib)
    prepared = research.prepared
    store = pipeline.open_store(store_dir, prepared, SETTINGS)
    evaluations = sum(len(g.candidates) for g in prepared.analysis.groups)
    context = Phase1Context(prepared.model, prepared.analysis, research.encodings, research.calib, research.reference,
                            SETTINGS.batch_size, prepared.profile.quantize_bias)
    start = time.perf_counter()
    table = sensitivity(context, store=store)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"[phase 1, research] {evaluations} evaluations in {seconds:.0f} s ({evaluations / seconds:.2f}/s), "
          f"process peak RSS {peak:.0f} MiB", flush=True)
    npu = setup("npu", calib)
    npu_table = SensitivityTable({
        (g.id, c): table.of(g.id, c) for g in npu.prepared.analysis.groups for c in g.candidates
    })
    rows = []
    for name, calibrated, tab in (("research", research, table), ("npu", npu, npu_table)):
        prep = calibrated.prepared
        curve = pareto_curve(tab, prep.analysis.groups, prep.group_bops, prep.reference_bops)
        for budget in BUDGETS:
            rows.append(row(name, f"MP@{budget:g}", select_by_bops(curve, budget).point.plan, calibrated, data, tab))
    return rows


def median_ms(sess, feeds, warmups: int, runs: int) -> float:
    for _ in range(warmups):
        sess.run(None, feeds)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        sess.run(None, feeds)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def latency(calib, data, work: Path, store_dir: Path) -> None:
    calibrated = setup("npu", calib, CLIPPING, store_dir / "clipping")  # the best W8A8: output-aware clipping
    prepared = calibrated.prepared
    plan = run_records.homogeneous_plan(prepared.analysis, Candidate(8, 8), prepared.profile)
    chosen = quantizers_for(
        prepared.model, prepared.analysis, plan, calibrated.encodings, quantize_bias=prepared.profile.quantize_bias
    )
    deployed = work / "onnxmp_w8a8.onnx"
    onnx.save(insert_quantizers(prepared.model, chosen, weights=WeightStorage.INTEGER), str(deployed))
    print(f"  onnxmp W8A8 (npu, output clipping) deployed, ORT integer kernels: Spearman {stsb.score(str(deployed), data, simulate=False):.2f}")
    rng = np.random.default_rng(0)
    models = {"float": stsb.MODEL, "onnxmp W8A8 (npu)": deployed, "ORT quantize_dynamic": work / "ort_dynamic.onnx"}
    results = {}
    for label, path in models.items():
        sess = runtime.session(str(path), simulate=False, optimization="all", threads=THREADS)
        for batch, (warmups, runs) in RUNS.items():
            feeds = {
                "input_ids": rng.integers(1000, 30000, (batch, SEQ)).astype(np.int64),
                "attention_mask": np.ones((batch, SEQ), np.int64),
                "token_type_ids": np.zeros((batch, SEQ), np.int64),
            }
            results[(label, batch)] = median_ms(sess, feeds, warmups, runs)
    print(f"\nONNX Runtime {runtime.ort.__version__} CPU latency, sequence {SEQ}, {THREADS} threads (median ms)")
    print(f"| {'model':<22} | {'batch 1':>8} | {'vs float':>8} | {'batch 32':>9} | {'vs float':>8} |")
    print("|" + "|".join("-" * w for w in (24, 10, 10, 11, 10)) + "|")
    for label in models:
        b1, b32 = results[(label, 1)], results[(label, 32)]
        print(f"| {label:<22} | {b1:8.2f} | {b1 / results[('float', 1)]:8.2f} | {b32:9.1f} | "
              f"{b32 / results[('float', 32)]:8.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--skip-mixed", action="store_true")
    parser.add_argument("--latency-only", action="store_true",
                        help="only the latency table (and the deployed W8A8 score), e.g. again on a quiet machine")
    parser.add_argument("--store-dir", default=str(Path(tempfile.gettempdir()) / "onnxmp-minilm"),
                        help="where phase 1 keeps its results (a rerun resumes; 0 s when resumed)")
    args = parser.parse_args()
    if not stsb.available():
        print("../shared is absent: nothing to measure")
        return
    data, calib = stsb.test_split(), stsb.calibration()
    fp32 = stsb.score(str(stsb.MODEL), data)
    print(f"FP32 Spearman {fp32:.2f}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.latency_only:
            ortq.quantize_dynamic(str(stsb.MODEL), str(work / "ort_dynamic.onnx"), weight_type=ortq.QuantType.QInt8)
            latency(calib, data, work, Path(args.store_dir))
            return
        rows = ort_baselines(work, data)
        for name in HOMOGENEOUS:
            rows += homogeneous_rows(name, calib, data, Path(args.store_dir))
        if not args.skip_mixed:
            rows += mixed_rows(calib, data, Path(args.store_dir))
        print("\nall-MiniLM-L6-v2, calibration stsb_minilm_calib (256), Spearman x100 on stsb_minilm_test (1379 pairs)")
        print(f"| {'profile':<16} | {'configuration':<34} | {'rel. BOPs':>9} | {'pred. SQNR dB':>13} | "
              f"{'meas. SQNR dB':>13} | {'Spearman':>8} |")
        print("|" + "|".join("-" * w for w in (18, 36, 11, 15, 15, 10)) + "|")
        print(f"| {'-':<16} | {'FP32':<34} | {1.0:9.4f} | {'':>13} | {'':>13} | {fp32:8.2f} |")
        for name, label, rel, predicted, measured, score in rows:
            cells = [f"{rel:9.4f}" if rel is not None else " " * 9,
                     f"{predicted:13.2f}" if predicted is not None and predicted == predicted else " " * 13,
                     f"{measured:13.2f}" if measured is not None else " " * 13]
            print(f"| {name:<16} | {label:<34} | {cells[0]} | {cells[1]} | {cells[2]} | {score:8.2f} |")
        if not args.skip_latency:
            latency(calib, data, work, Path(args.store_dir))


if __name__ == "__main__":
    main()
