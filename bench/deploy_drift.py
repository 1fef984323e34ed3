"""How far ONNX Runtime's integer kernels drift from the float32 QDQ simulation, layer by layer.

Quantizes EfficientNet-Lite0 at W8A8 (npu profile, 32 calibration images) one prefix of
groups at a time and prints the SQNR of the fused integer run (simulate=False) against the
simulation on 16 images. The integer kernels and the float32 simulation part by one LSB
where float32 accumulation lands next to a rounding boundary, and that compounds.

Run: python bench/deploy_drift.py
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import imagenet  # noqa: E402

from onnxmp import inputs, run_records, runtime, steps  # noqa: E402
from onnxmp.calib_data import CalibrationSet  # noqa: E402
from onnxmp.passes.calibrate import calibrate  # noqa: E402
from onnxmp.passes.insert_qdq import insert_qdq  # noqa: E402
from onnxmp.quant_math import signal_and_noise  # noqa: E402
from onnxmp.records import Candidate, Plan  # noqa: E402


def _sqnr_db(signal: float, noise: float) -> float:
    if noise == 0:
        return math.inf
    return -math.inf if signal == 0 else 10 * math.log10(signal / noise)

def main() -> None:
    if not imagenet.EFFICIENTNET.exists():
        print("../shared is absent: nothing to measure")
        return
    import onnx

    model = onnx.load(str(imagenet.EFFICIENTNET))
    calib = CalibrationSet({"input": imagenet.calibration_images(model).arrays["input"][:32]})
    model, profile, calib = inputs.load_inputs(model, "npu", calib)
    prepared = steps.prepare(model, profile, calib)
    encodings = calibrate(prepared.model, prepared.graph, prepared.analysis, calib, profile=profile)
    feeds = {"input": calib.arrays["input"][:16]}
    full = run_records.homogeneous_plan(prepared.analysis, Candidate(8, 8), profile)
    ids = list(full)
    print(f"{'groups quantized':>16}  {'last group':<40} {'integer vs simulated dB':>24}")
    for k in (1, 2, 3, 4, 6, 8, 12, 20, 30, len(ids)):
        qdq = insert_qdq(prepared.model, analysis=prepared.analysis, plan=Plan({i: full[i] for i in ids[:k]}),
                         encodings=encodings, quantize_bias=profile.quantize_bias)
        simulated = runtime.session(qdq).run(None, feeds)[0]
        deployed = runtime.session(qdq, simulate=False).run(None, feeds)[0]
        print(f"{k:16d}  {ids[k - 1]:<40} {_sqnr_db(*signal_and_noise(simulated, deployed)):24.1f}", flush=True)


if __name__ == "__main__":
    main()
