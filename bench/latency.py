"""ONNX Runtime latency of the emitted QDQ models against the float model, in one run.

Models: the shipped digits CNN (calibrated on models/digits_calib.npz) and, when ../shared
exists, EfficientNet-Lite0 (calibrated on the first 64 images of imagenet/samples, sorted by
name, TF preprocessing). Configurations: float, onnxmp W8A8, onnxmp mixed at --target-bops 0.3,
all on the npu profile.

Sessions: CPU, every graph optimization, QDQ fusions on (`runtime.session(simulate=False)`),
2 intra-op threads. Batch 1: median of 50 runs after 5 warm-ups; batch 32: median of 10
runs after 2 warm-ups. Ratios are quantized / float from the same process. The fused
integer ops are counted in the graph ONNX Runtime writes after optimization.

When a configuration fails on the npu profile, the error is printed and the configuration is
run again on a copy of the npu profile with `schemes.bias.quantize: false` (rows marked
"float bias"; ONNX Runtime then quantizes the biases itself when it fuses).

Run: python bench/latency.py
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import onnx

from onnxmp import calib_data, model_io, pipeline, runtime
from onnxmp.calib_data import Preprocess

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
THREADS = 2
RUNS = {1: (5, 50), 32: (2, 10)}  # batch -> (warm-ups, timed runs)
CONFIGS = {"W8A8": {"bits": "W8A8"}, "mixed 0.3": {"target_bops": 0.3}}
INTEGER_OPS = ("QLinear", "QGemm", "ConvInteger", "MatMulInteger", "DynamicQuantize")


def float_bias_profile(directory: Path) -> Path:
    """A copy of the built-in npu profile that keeps biases in float."""
    text = (REPO / "hw_profiles" / "npu.yaml").read_text()
    lines = [
        "  bias: {quantize: false}" if line.strip().startswith("bias:") else line
        for line in text.splitlines()
    ]
    lines = ["name: npu-float-bias" if line.startswith("name:") else line for line in lines]
    path = directory / "npu-float-bias.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def median_ms(session, feeds: dict[str, np.ndarray], warmups: int, runs: int) -> float:
    for _ in range(warmups):
        session.run(None, feeds)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def fused_ops(optimized: Path) -> Counter:
    ops = Counter(n.op_type for n in onnx.load(str(optimized)).graph.node)
    return Counter({op: k for op, k in ops.items() if op.startswith(INTEGER_OPS)})


def float_kernels(optimized: Path) -> int:
    kernels = ("Conv", "FusedConv", "Gemm", "MatMul", "FusedGemm", "FusedMatMul")
    return sum(n.op_type in kernels for n in onnx.load(str(optimized)).graph.node)


def quantize(model, calib, config: str, work: Path, fallback: Path) -> tuple[Path | None, str, float]:
    """The emitted model of `config` on npu (or on the float-bias copy when npu fails)."""
    for profile, label in (("npu", config), (fallback, f"{config} (float bias)")):
        start = time.perf_counter()
        try:
            result = pipeline.quantize(
                model, profile=profile, calib=calib, output_dir=work / label.replace(" ", "_"), **CONFIGS[config]
            )
        except Exception as e:  # report and try the fallback profile
            message = str(e).splitlines()[0] if str(e) else ""
            print(f"  {config} on {Path(str(profile)).stem}: {type(e).__name__}: {message} "
                  f"(after {time.perf_counter() - start:.0f} s)")
            continue
        print(f"  {label}: quantized in {time.perf_counter() - start:.0f} s, bops_rel {result.point.bops_rel:.3f}, "
              f"measured SQNR {result.point.measured_sqnr_db:.2f} dB")
        return result.paths["model"], label, result.point.bops_rel
    return None, config, float("nan")


def measure(name: str, model_path: Path, calib: calib_data.CalibrationSet, work: Path, fallback: Path) -> list[tuple]:
    """Rows (model, configuration, bops_rel, fused ops, float kernels, ms and ratio per batch)."""
    print(f"{name}: quantizing")
    model = model_io.load(model_path)
    variants = [("float", model_path, 1.0)]
    for config in CONFIGS:
        path, label, bops_rel = quantize(model, calib, config, work / name, fallback)
        if path is not None:
            variants.append((label, path, bops_rel))
    (input_name,) = calib.arrays
    samples = calib.arrays[input_name]
    rows, float_ms = [], {}
    for label, path, bops_rel in variants:
        optimized = work / name / f"{label.replace(' ', '_')}.optimized.onnx"
        session = runtime.session(
            str(path), simulate=False, optimization="all", threads=THREADS, optimized_model_path=str(optimized)
        )
        latency = {}
        for batch, (warmups, runs) in RUNS.items():
            feeds = {input_name: np.ascontiguousarray(samples[:batch])}
            assert len(feeds[input_name]) == batch, f"{name}: fewer than {batch} calibration samples"
            latency[batch] = median_ms(session, feeds, warmups, runs)
        if label == "float":
            float_ms = dict(latency)
        rows.append((name, label, bops_rel, fused_ops(optimized), float_kernels(optimized),
                     {b: (ms, ms / float_ms[b]) for b, ms in latency.items()}))
    return rows


def main() -> None:
    print(f"onnxruntime {runtime.ort.__version__}, CPU, optimization all, QDQ fusions on, {THREADS} intra-op threads")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        fallback = float_bias_profile(work)
        digits = REPO / "models" / "digits_cnn.onnx"
        calib = calib_data.load_arrays(REPO / "models" / "digits_calib.npz", model_io.load(digits))
        rows += measure("digits_cnn", digits, calib, work, fallback)
        efficientnet = SHARED / "models" / "efficientnet_lite0.onnx"
        if efficientnet.exists():
            model = model_io.load(efficientnet)
            calib = calib_data.load_images(SHARED / "imagenet" / "samples", model, Preprocess.TF, limit=64)
            rows += measure("efficientnet_lite0", efficientnet, calib, work, fallback)
        else:
            print("../shared is absent: EfficientNet-Lite0 skipped")
    print()
    print(f"| {'model':<18} | {'configuration':<24} | {'bops_rel':>8} | {'b=1 ms':>8} | {'b=1 q/f':>7} "
          f"| {'b=32 ms':>8} | {'b=32 q/f':>8} | {'int ops':>7} | {'float conv/gemm':>15} |")
    print("|" + "|".join("-" * w for w in (20, 26, 10, 10, 9, 10, 10, 9, 17)) + "|")
    for name, label, bops_rel, ops, floats, latency in rows:
        print(f"| {name:<18} | {label:<24} | {bops_rel:8.3f} | {latency[1][0]:8.3f} | {latency[1][1]:7.2f} "
              f"| {latency[32][0]:8.2f} | {latency[32][1]:8.2f} | {sum(ops.values()):7d} | {floats:15d} |")
    print()
    for name, label, _, ops, _, _ in rows:
        if ops:
            print(f"{name} {label}: " + ", ".join(f"{op} {k}" for op, k in sorted(ops.items())))


if __name__ == "__main__":
    main()
