"""Which 8-bit activations cost all-MiniLM-L6-v2's W8A8 its score (issue 14's diagnosis).

W8A8 on the npu profile, MSE ranges; each activation in turn at 16 bits (its 16-bit range),
everything else as is: output SQNR over the calibration sentences. Then the K worst at 16 bits
together, with their Spearman on stsb_minilm_test, and W8A8 with min-max ranges for
comparison. This is what showed the FFN outputs entering the residual Adds as the cost
(README "Transformers"), and what output-aware clipping (--activation-clipping output) fixes.

Run: flock /work/bench.lock python bench/minilm_a8_tensors.py  (about 3 minutes alone)
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import numpy as np  # noqa: E402
import stsb  # noqa: E402

from onnxmp import inputs, run_records, steps  # noqa: E402
from onnxmp.passes.collect_histograms import activation_histograms  # noqa: E402
from onnxmp.records import Candidate, RangeMethod  # noqa: E402

SHOWN, TOGETHER = 12, (2, 4, 6)


def calibrated(settings: run_records.Settings) -> run_records.Calibrated:
    model, profile, calib = inputs.load_inputs(str(stsb.MODEL), "npu", stsb.calibration())
    return steps.calibrate_ranges(steps.prepare(model, profile, calib), calib, settings)


def main() -> None:
    if not stsb.available():
        print("../shared is absent: nothing to measure")
        return
    data = stsb.test_split()
    base = calibrated(run_records.Settings())
    prepared = base.prepared
    plan = run_records.homogeneous_plan(prepared.analysis, Candidate(8, 8), prepared.profile)

    def at_16(tensors) -> run_records.Calibrated:
        encodings = dict(base.encodings)
        for tensor in tensors:
            encodings[(tensor, 8)] = base.encodings[(tensor, 16)]  # the 16-bit range in the 8-bit slot
        return replace(base, encodings=encodings)

    def score(c: run_records.Calibrated) -> tuple[float, float]:
        return steps.measured_sqnr(c, plan, 16), stsb.score(steps.simulate(prepared, plan, c.encodings), data)

    sqnr, spearman = score(base)
    print(f"W8A8, MSE ranges: {sqnr:.2f} dB, Spearman {spearman:.2f}")
    minmax = calibrated(run_records.Settings(range_method=RangeMethod.MINMAX))
    print("W8A8, min-max ranges: {:.2f} dB, Spearman {:.2f}".format(*score(minmax)))
    tensors = sorted({t for g in prepared.analysis.groups for t in g.activations})
    alone = sorted(((steps.measured_sqnr(at_16([t]), plan, 16), t) for t in tensors), reverse=True)
    print(f"\n{len(tensors)} activations; output SQNR with one of them at 16 bits (the {SHOWN} that help most):")
    for db, tensor in alone[:SHOWN]:
        print(f"  {db:6.2f} dB  {tensor}")
    worst = alone[0][1]
    counts, edges = activation_histograms(prepared.model, base.calib, [worst], batch_size=16)[worst]
    seen = np.flatnonzero(counts)
    enc = base.encodings[(worst, 8)]
    print(f"{worst}: observed [{edges[seen[0]]:.1f}, {edges[seen[-1] + 1]:.1f}], 8-bit MSE range "
          f"[{-enc.zero_point[0] * enc.scale[0]:.1f}, {(enc.qmax - enc.zero_point[0]) * enc.scale[0]:.1f}]")
    for k in TOGETHER:
        db, rho = score(at_16([t for _, t in alone[:k]]))
        print(f"the {k} worst at 16 bits together: {db:.2f} dB, Spearman {rho:.2f}")


if __name__ == "__main__":
    main()
