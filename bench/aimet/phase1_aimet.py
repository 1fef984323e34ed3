"""Time AIMET AMP's phase 1 (per quantizer group x candidate SQNR) with the real aimet-onnx.

Run with the AIMET virtualenv (see README.md in this folder):

    /tmp/aimet-venv/bin/python bench/aimet/phase1_aimet.py --model models/digits_cnn.onnx \
        --inputs models/digits_calib.npz --num-images 256

What it runs is what aimet_onnx.mixed_precision.choose_mixed_precision runs before phase 2:
GreedyMixedPrecisionAlgo(..., phase1_optimize=True) with candidates W8A16, W8A8, W4A8,
min-max ranges, per-channel weights (config "default"), the built-in SQNR eval callback
(EvalCallbackFactory.sqnr) on N images, and the same N images for compute_encodings.
set_baseline() (FP32 eval + one compute_encodings/eval per candidate to pick the baseline) is
timed separately; phase 1 is _create_and_save_accuracy_list(baseline), the call run() times as
"Time taken by phase1". Model BNs are folded first with AIMET's fold_all_batch_norms_to_weight,
as AIMET's docs ask before building a QuantizationSimModel.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import signal
import sys
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import onnx
from aimet_onnx.amp.mixed_precision_algo import EvalCallbackFactory, GreedyMixedPrecisionAlgo
from aimet_onnx.batch_norm_fold import fold_all_batch_norms_to_weight
from aimet_onnx.common.defs import CallbackFunc, QuantizationDataType
from aimet_onnx.quantsim import QuantizationSimModel

INT = QuantizationDataType.int
# AIMET's CANDIDATE_WITH_DTYPE: ((activation bits, dtype), (param bits, dtype))
CANDIDATES = {
    "W8A16": ((16, INT), (8, INT)),
    "W8A8": ((8, INT), (8, INT)),
    "W4A8": ((8, INT), (4, INT)),
}


@dataclass(frozen=True)
class BatchLoader:
    """The minimal data loader AIMET's SQNR callback reads: `batch_size` and iteration."""

    data: np.ndarray
    batch_size: int

    def __iter__(self):
        for start in range(0, len(self.data), self.batch_size):
            yield self.data[start : start + self.batch_size]

    def __len__(self):
        return -(-len(self.data) // self.batch_size)


class TimeLimitError(Exception):
    """Raised from the eval callback to stop phase 1 once --time-limit has passed."""


class CountingCallback:
    """Wraps an AIMET eval callback; counts calls and their time; stops at a deadline."""

    def __init__(self, inner):
        self.inner, self.calls, self.seconds = inner, 0, 0.0
        self.deadline = float("inf")

    def __call__(self, session):
        if time.perf_counter() > self.deadline:
            raise TimeLimitError
        start = time.perf_counter()
        try:
            return self.inner(session)
        finally:
            self.calls += 1
            self.seconds += time.perf_counter() - start


def candidate_name(candidate) -> str:
    (a_bits, _), (w_bits, _) = candidate
    return f"W{w_bits}A{a_bits}"


def peak_rss_mib() -> tuple[float, float]:
    """ru_maxrss (KiB on Linux) of this process and of its waited-for children, in MiB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return own, children


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument(
        "--inputs", required=True, help=".npz with the model input (first key, or --input-name)"
    )
    p.add_argument("--num-images", type=int, required=True)
    p.add_argument(
        "--input-name", default=None, help="model input name (default: the model's only input)"
    )
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--candidates", default="W8A16,W8A8,W4A8")
    p.add_argument(
        "--phase1-optimize",
        choices=["on", "off"],
        default="on",
        help="choose_mixed_precision's default is on (one compute_encodings per candidate)",
    )
    p.add_argument(
        "--all-candidates",
        action="store_true",
        help="use_all_amp_candidates=True (ignore the config's supported_kernels; default False as in choose_mixed_precision)",
    )
    p.add_argument("--threads", type=int, default=2, help="ORT intra-op threads")
    p.add_argument(
        "--time-limit",
        type=float,
        default=None,
        help="stop phase 1 after this many seconds and report the rate and the projected total",
    )
    p.add_argument(
        "--json", action="store_true", help="also print the figures as one JSON line, last"
    )
    p.add_argument("-v", "--verbose", action="store_true", help="keep AIMET's INFO logging")
    return p.parse_args()


def build(args):
    model = onnx.load(args.model)
    folded, _ = fold_all_batch_norms_to_weight(model)
    name = args.input_name or model.graph.input[0].name
    npz = np.load(args.inputs)
    data = np.ascontiguousarray(
        (npz[name] if name in npz else npz[npz.files[0]])[: args.num_images]
    )
    sim = QuantizationSimModel(
        model,
        param_type="int8",
        activation_type="int16",
        quant_scheme="min_max",
        config_file="default",
        session_options_kwargs={"intra_op_num_threads": args.threads},
    )
    return sim, name, data, len(folded)


def main() -> None:
    args = parse_args()
    # SIGTERM -> SystemExit, so the results TemporaryDirectory is removed on the way out
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    if not args.verbose:
        for logger_name in list(logging.root.manager.loggerDict):
            logging.getLogger(logger_name).setLevel(logging.WARNING)
    t_start = time.perf_counter()
    sim, name, data, n_folded = build(args)
    loader = BatchLoader(data, args.batch_size)

    def forward_fn(session, x):
        return session.run(None, {name: x})[0]

    def forward_pass(session, _):
        for x in loader:
            session.run(None, {name: x})

    sqnr = CountingCallback(
        EvalCallbackFactory(loader, forward_fn).sqnr(sim, num_samples=len(data))
    )
    setup = Setup(sim, data, n_folded, t_start, sqnr, CallbackFunc(forward_pass, None))
    with tempfile.TemporaryDirectory(prefix="aimet-amp-") as results_dir:
        run_phase1(args, setup, results_dir)


@dataclass(frozen=True)
class Setup:
    sim: QuantizationSimModel
    data: np.ndarray
    n_folded: int
    t_start: float
    sqnr: CountingCallback
    forward_pass: CallbackFunc


def run_phase1(args, setup: Setup, results_dir: str) -> None:
    """set_baseline, then phase 1 alone; prints the figures."""
    sim, data, n_folded, t_start, sqnr = (
        setup.sim,
        setup.data,
        setup.n_folded,
        setup.t_start,
        setup.sqnr,
    )
    candidates = [CANDIDATES[c] for c in args.candidates.split(",")]
    algo = GreedyMixedPrecisionAlgo(
        sim,
        candidates,
        sqnr,
        sqnr,
        results_dir,
        True,
        setup.forward_pass,
        use_all_amp_candidates=args.all_candidates,
        phase1_optimize=args.phase1_optimize == "on",
    )
    n_groups = len(algo.quantizer_groups)
    n_act_only = sum(1 for g in algo.quantizer_groups if not g.parameter_quantizers)
    t_setup = time.perf_counter()
    algo.set_baseline()
    t_baseline = time.perf_counter()
    baseline_calls = sqnr.calls
    planned = sum(
        sum(1 for c in cands if c != algo.baseline_candidate)
        for cands in algo._supported_candidates_per_quantizer_group.values()  # pylint: disable=protected-access
    )
    if args.time_limit is not None:
        sqnr.deadline = t_baseline + args.time_limit
    stopped = False
    try:
        accuracy_list = algo._create_and_save_accuracy_list(algo.baseline_candidate)  # pylint: disable=protected-access
    except TimeLimitError:
        stopped = True
        accuracy_list = []
    t_phase1 = time.perf_counter()

    phase1_s = t_phase1 - t_baseline
    evals = sqnr.calls - baseline_calls if stopped else len(accuracy_list)
    own, children = peak_rss_mib()
    print(
        f"model {args.model}: {n_folded} BN folded by AIMET, {n_groups} quantizer groups ({n_act_only} activation-only), "
        f"{len(data)} images x {data.shape[1:]}, batch {args.batch_size}, phase1_optimize={args.phase1_optimize}"
    )
    print(
        f"candidates {args.candidates}; baseline chosen by AIMET: {candidate_name(algo.baseline_candidate)}"
    )
    print(f"sim build + AMP init  {t_setup - t_start:8.1f} s")
    print(
        f"set_baseline          {t_baseline - t_setup:8.1f} s  ({baseline_calls} SQNR evals: FP32 + one per baseline option)"
    )
    print(
        f"phase 1               {phase1_s:8.1f} s"
        + (
            f"  STOPPED by --time-limit after {evals} of {planned} evaluations; "
            f"projected full phase 1 {planned * phase1_s / max(evals, 1):.0f} s"
            if stopped
            else ""
        )
    )
    print(
        f"(group, candidate) evaluations  {evals} of {planned} planned  (SQNR callback calls in phase 1: {sqnr.calls - baseline_calls}, "
        f"{sqnr.seconds:.1f} s in all SQNR calls)"
    )
    print(f"evaluations per second          {evals / phase1_s:.3f}")
    print(f"peak RSS  self {own:.0f} MiB + children {children:.0f} MiB = {own + children:.0f} MiB")
    print(f"total wall                      {t_phase1 - t_start:.1f} s")
    if args.json:
        print(
            json.dumps(
                {
                    "tool": "aimet_onnx",
                    "model": args.model,
                    "num_images": len(data),
                    "groups": n_groups,
                    "baseline_s": round(t_baseline - t_setup, 2),
                    "phase1_s": round(phase1_s, 2),
                    "evaluations": evals,
                    "evals_per_s": round(evals / phase1_s, 4),
                    "peak_rss_mib": round(own + children),
                    "planned_evaluations": planned,
                    "stopped_by_time_limit": stopped,
                }
            )
        )
        return
    if stopped:
        return
    per_candidate = {}
    for _group, candidate, _, _ in accuracy_list:
        per_candidate[candidate_name(candidate)] = (
            per_candidate.get(candidate_name(candidate), 0) + 1
        )
    print(f"evaluations per candidate: {per_candidate}")
    worst = sorted(accuracy_list, key=lambda row: row[2])[:3]
    print(
        "lowest phase-1 SQNR (dB): "
        + "; ".join(
            f"{'+'.join(row[0].parameter_quantizers + row[0].activation_quantizers)} {candidate_name(row[1])} {row[2]:.2f}"
            for row in worst
        )
    )


if __name__ == "__main__":
    main()
