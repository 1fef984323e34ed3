"""The floor of suffix-only phase 1: what running just each group's suffix costs, warm.

Why: the issue's naive-cost ratio, time(phase 1) / (G·K float forwards), cannot go below
the average cost of the suffixes themselves. This times, for every group of
EfficientNet-Lite0 (npu profile), the float suffix and each candidate's quantized suffix on
64 images, warm (best of 2 after a warm-up run), relative to a whole float forward on the
same images, and prints the per-group table and the average over all (group, candidate).

Run: python bench/phase1_floor.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import onnx

from onnxmp import inputs, run_records, runtime, steps
from onnxmp.passes.calibrate import calibrate
from onnxmp.passes.extract_subgraph import affected_nodes, frontier, subgraph
from onnxmp.passes.frontier_walk import FrontierWalk
from onnxmp.passes.insert_qdq import WeightStorage, insert_qdq
from onnxmp.phase1.jobs import network_order
from onnxmp.records import Plan

sys.path.insert(0, str(Path(__file__).parent))
import imagenet  # noqa: E402
from phase1_ours import warm_seconds  # noqa: E402

IMAGES, BATCH, REPEATS = 64, run_records.Settings().batch_size, 2


def main() -> None:
    if not imagenet.EFFICIENTNET.exists():
        print("../shared is absent: nothing to measure")
        return
    model = onnx.load(str(imagenet.EFFICIENTNET))
    model, profile, calib = inputs.load_inputs(model, "npu", imagenet.calibration_images(model))
    prepared = steps.prepare(model, profile, calib)
    arrays = {k: v[:IMAGES] for k, v in calib.arrays.items()}
    encodings = calibrate(prepared.model, prepared.graph, prepared.analysis, calib, profile=prepared.profile)
    model, index = prepared.model, prepared.graph
    cuts = [(g, affected_nodes(index, g)) for g in network_order(index, prepared.analysis.groups)]
    walk = FrontierWalk(model, index, arrays, [frontier(index, n) for _, n in cuts], batch_size=BATCH, budget_bytes=2**40)
    forward = warm_seconds(runtime.session(model), [{k: v[i : i + BATCH] for k, v in arrays.items()}
                                                    for i in range(0, IMAGES, BATCH)], REPEATS)
    print(f"float forward, {IMAGES} images, batch {BATCH}: {forward:.3f} s (warm)")
    print(f"{'step':>4} {'group':<40} {'float':>6}  quantized suffix per candidate (x forward)")
    total, float_total, pairs = 0.0, 0.0, 0
    for step, (group, nodes) in enumerate(cuts):
        chunks = [feeds for _, feeds in walk.chunks(step)]
        outputs = [o for o in index.graph_outputs if index.producer_of.get(o) in nodes]
        suffix = subgraph(model, index, nodes, frontier(index, nodes), outputs)
        costs = []
        for candidate in group.candidates:
            quantized = insert_qdq(suffix, analysis=prepared.analysis, plan=Plan({group.id: candidate}),
                                   encodings=encodings, weights=WeightStorage.FAKE_FLOAT,
                                   quantize_bias=prepared.profile.quantize_bias)
            costs.append(warm_seconds(runtime.session(quantized), chunks, REPEATS) / forward)
        float_cost = warm_seconds(runtime.session(suffix), chunks, REPEATS) / forward
        total, float_total, pairs = total + sum(costs), float_total + float_cost * len(costs), pairs + len(costs)
        print(f"{step:4d} {group.id[:40]:<40} {float_cost:6.2f}  " + " ".join(f"{c:.2f}" for c in costs))
    print(f"floor: mean quantized-suffix cost over {pairs} (group, candidate) pairs = {total / pairs:.3f} forwards "
          f"(float suffixes alone: {float_total / pairs:.3f}; Q/DQ adds {100 * (total / float_total - 1):.1f} %)")


if __name__ == "__main__":
    main()
