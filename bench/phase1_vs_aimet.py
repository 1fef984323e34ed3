"""Issue 5 benchmark: onnxmp's phase 1 against AIMET AMP's phase 1, in one run.

EfficientNet-Lite0, candidates W8A16/W8A8/W4A8, the first 256 images of imagenet/samples
(sorted by name, TF preprocessing). Each tool runs in its own process so peak RSS is its own;
AIMET runs in the virtualenv made by bench/aimet/setup_venv.sh (aimet-onnx 2.42.0, CPU torch).
Prints wall time, evaluations, evaluations per second and peak RSS of each, the ratios, and
onnxmp's naive-cost ratio time(phase 1) / (evaluations x one float forward over the set).
With --techniques, also times each phase-1 technique on every 5th group (same run).

Run: python bench/phase1_vs_aimet.py [--techniques] [--skip-aimet]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).parent))
import imagenet  # noqa: E402

HERE = Path(__file__).parent
AIMET_PYTHON = Path("/tmp/aimet-venv/bin/python")


def last_json(command: list[str]) -> dict:
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(command[:3])} failed:\n{done.stderr[-2000:]}")
    return json.loads(lines[-1])


def ours(inputs: Path, technique: str, every: int = 1) -> dict:
    return last_json([sys.executable, str(HERE / "phase1_ours.py"), "--model", str(imagenet.EFFICIENTNET),
                      "--inputs", str(inputs), "--technique", technique, "--groups-every", str(every)])


def aimet(inputs: Path, time_limit: float | None) -> dict:
    limit = ["--time-limit", str(time_limit)] if time_limit else []
    return last_json([str(AIMET_PYTHON), str(HERE / "aimet" / "phase1_aimet.py"), "--model", str(imagenet.EFFICIENTNET),
                      "--inputs", str(inputs), "--num-images", "256", "--json", *limit])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--techniques", action="store_true")
    parser.add_argument("--skip-aimet", action="store_true")
    parser.add_argument("--aimet-time-limit", type=float, default=600.0,
                        help="stop AIMET's phase 1 after this many seconds and project its total from the "
                             "measured rate (its full run takes over an hour here); 0 runs it to the end")
    args = parser.parse_args()
    if not imagenet.EFFICIENTNET.exists():
        print("../shared is absent: nothing to measure")
        return
    calib = imagenet.calibration_images(onnx.load(str(imagenet.EFFICIENTNET)))
    inputs = imagenet.CACHE / "effnet-samples-256.npz"
    if not inputs.exists():
        np.savez(inputs, input=calib.arrays["input"])
    mine = ours(inputs, "suffix")  # each tool alone on the machine: one after the other
    print(f"\nPhase 1 on EfficientNet-Lite0, 256 images, W8A16/W8A8/W4A8 ({mine['groups']} onnxmp groups)")
    print(f"{'tool':<10} {'groups':>6} {'evals':>6} {'wall s':>8} {'evals/s':>8} {'peak RSS MiB':>13}")
    print(f"{'onnxmp':<10} {mine['groups']:6d} {mine['evaluations']:6d} {mine['seconds']:8.1f} "
          f"{mine['evals_per_s']:8.2f} {mine['peak_rss_mb']:13.0f}")
    if not args.skip_aimet and AIMET_PYTHON.exists():
        theirs = aimet(inputs, args.aimet_time_limit or None)
        planned = theirs.get("planned_evaluations", theirs["evaluations"])
        total = planned / theirs["evals_per_s"]
        stopped = " (stopped at the time limit)" if theirs.get("stopped_by_time_limit") else ""
        print(f"{'AIMET AMP':<10} {theirs['groups']:6d} {theirs['evaluations']:6d} {theirs['phase1_s']:8.1f} "
              f"{theirs['evals_per_s']:8.3f} {theirs['peak_rss_mib']:13.0f}{stopped}")
        print(f"AIMET plans {planned} evaluations: projected phase 1 {total:.0f} s at its measured rate")
        print(f"evaluations per second, onnxmp / AIMET: {mine['evals_per_s'] / theirs['evals_per_s']:.1f}x; "
              f"whole phase 1, AIMET (projected) / onnxmp: {total / mine['seconds']:.1f}x; "
              f"peak RSS onnxmp / AIMET: {mine['peak_rss_mb'] / theirs['peak_rss_mib']:.2f}")
    elif not args.skip_aimet:
        print("AIMET: no virtualenv at /tmp/aimet-venv (run bench/aimet/setup_venv.sh)")
    print(f"one float forward over the 256 images (batch 16, fastest of 3): {mine['float_forward_s']:.2f} s; "
          f"naive-cost ratio time(phase 1) / (evals x forward) = {mine['naive_cost_ratio']:.3f}")
    print(f"inside onnxmp's phase 1: {mine['session_build_s']:.1f} s building ONNX Runtime sessions, "
          f"{mine['frontier_walk_s']:.1f} s computing float frontiers; peak RSS before phase 1 "
          f"(load, canonicalize, calibrate) {mine['peak_rss_before_phase1_mb']:.0f} MiB")
    if args.techniques:
        print("\nTechniques, every 5th group (same evaluations each):")
        print(f"{'technique':<18} {'evals':>6} {'wall s':>8} {'evals/s':>8} {'naive-cost ratio':>17} {'peak RSS MiB':>13}")
        for technique in ("naive", "ort-all", "ort-all-b16", "suffix", "suffix-processes"):
            row = ours(inputs, technique, every=5)
            print(f"{technique:<18} {row['evaluations']:6d} {row['seconds']:8.1f} {row['evals_per_s']:8.2f} "
                  f"{row['naive_cost_ratio']:17.3f} {row['peak_rss_mb']:13.0f}")


if __name__ == "__main__":
    main()
