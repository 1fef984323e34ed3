"""Issue 2 benchmark: homogeneous precision on EfficientNet-Lite0 vs ONNX Runtime's quantizer.

Calibrates on the first 256 images of ../shared/data/imagenet/samples (sorted by name) and
scores top-1 on all 1300 images of imagenet/val; prints one table: FP32, onnxmp W8A16 /
W8A8 / W4A8 (MSE ranges) and W8A8 with min-max ranges, and ONNX Runtime quantize_static
(QDQ, per-channel, MinMax) at W8A8 and W4A8, all measured in this run.

Run: python bench/efficientnet_fixed.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).parent))
import imagenet  # noqa: E402

from onnxmp import pipeline, run_records  # noqa: E402
from onnxmp.records import RangeMethod  # noqa: E402


def ort_quantize_static(model_path: Path, calib: np.ndarray, weight_type, out: Path) -> onnx.ModelProto:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"input": calib[i : i + 16]} for i in range(0, len(calib), 16)])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(
        str(model_path), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QUInt8, weight_type=getattr(QuantType, weight_type),
    )
    return onnx.load(str(out))


def main() -> None:
    setup = imagenet.efficientnet_setup()
    if setup is None:
        return
    model, calib, images, labels = setup
    rows = [("FP32", "-", imagenet.top1(model, images, labels), float("nan"), 0.0)]
    with tempfile.TemporaryDirectory() as tmp:
        for bits, method in [("W8A16", RangeMethod.MSE), ("W8A8", RangeMethod.MSE), ("W8A8", RangeMethod.MINMAX), ("W4A8", RangeMethod.MSE)]:
            start = time.perf_counter()
            result = pipeline.quantize(
                model, profile="npu", calib=calib, output_dir=Path(tmp) / f"{bits}-{method.value}", bits=bits,
                settings=run_records.Settings(range_method=method),
            )
            seconds = time.perf_counter() - start
            qdq = onnx.load(str(result.paths["model"]))
            rows.append((f"onnxmp {bits}", method.value, imagenet.top1(qdq, images, labels), result.point.measured_sqnr_db, seconds))
        for name, weight_type in [("W8A8", "QInt8"), ("W4A8", "QInt4")]:
            start = time.perf_counter()
            try:
                qdq = ort_quantize_static(imagenet.EFFICIENTNET, calib.arrays["input"], weight_type, Path(tmp) / f"ort-{name}.onnx")
            except Exception as e:  # older ORT without int4 weights
                print(f"ORT {name}: {type(e).__name__}: {e}")
                continue
            seconds = time.perf_counter() - start
            rows.append((f"ORT quantize_static {name}", "minmax", imagenet.top1(qdq, images, labels), float("nan"), seconds))
    fp32 = rows[0][2]
    print("\nEfficientNet-Lite0, calib 256 imagenet/samples, top-1 on 1300 imagenet/val")
    print(f"{'configuration':<28} {'ranges':<7} {'top-1 %':>8} {'vs FP32':>8} {'SQNR dB':>8} {'time s':>7}")
    for name, method, acc, sqnr, seconds in rows:
        print(f"{name:<28} {method:<7} {acc:8.2f} {acc - fp32:+8.2f} {sqnr:8.2f} {seconds:7.1f}")


if __name__ == "__main__":
    main()
