"""The `ort` latency model of a run: group timings, the fitted border cost, kept in the store.

Why: measuring every group at every candidate and fitting the border cost takes a few
seconds of whole-model ORT runs (and minutes on a busy machine); a rerun or `onnxmp search`
in the same folder reads them back, as phase 1 does its SQNRs (one store line, written once
everything is measured, under the store's key: model, profile with its `latency:` section,
calibration, ORT version). Timings belong to the machine that measured them: a store moved
to another machine carries its numbers along (delete its `ort_latency` lines to remeasure).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import onnx

from onnxmp import bops
from onnxmp.float_candidate import float_of, quantized_part
from onnxmp.latency_spec import OrtSpec
from onnxmp.passes.insert_qdq import insert_qdq
from onnxmp.phase1.ort_borders import (
    BorderCost,
    KernelKind,
    borders_of,
    crossing,
    fit_border_cost,
    kind_of,
    probe_plans,
)
from onnxmp.phase1.ort_latency import GroupTiming, OrtLatency, measure_groups, paired_ms
from onnxmp.records import Candidate, GroupAnalysis, Plan, QuantizerGroup, TensorEncoding
from onnxmp.store import ResultStore

logger = logging.getLogger(__name__)
STORE_KIND = "ort_latency"


def ort_latency_model(
    model: onnx.ModelProto,
    analysis: GroupAnalysis,
    encodings: Mapping[tuple[str, int], TensorEncoding],
    spec: OrtSpec,
    *,
    sample_shapes: Mapping[str, tuple[int, ...]],
    quantize_bias: bool = False,
    store: ResultStore | None = None,
) -> OrtLatency:
    """Group timings (in context) and the border cost, from `store` when it holds them."""
    borders = borders_of(bops.concrete_graph(model, sample_shapes), analysis)
    cached = _cached(store, analysis)
    if cached is not None:
        return OrtLatency(cached.group_ms, cached.float_model_ms, borders, cached.border_cost)
    base = measure_groups(model, analysis, encodings, spec, sample_shapes=sample_shapes,
                          quantize_bias=quantize_bias, how=GroupTiming.IN_CONTEXT)
    base = OrtLatency(base.group_ms, base.float_model_ms, borders)
    feeds = {name: np.zeros(shape, np.float32) for name, shape in sample_shapes.items()}

    def deployed(plan: Plan) -> onnx.ModelProto:
        return insert_qdq(model, analysis=analysis, plan=quantized_part(plan), encodings=encodings, quantize_bias=quantize_bias)

    reference, *probes = probe_plans(analysis.groups, integer_candidate, lambda g: float_of(g.highest))
    samples = [(0, 0, 0.0)]  # the all-integer reference: no border, no residual by construction
    for probe in probes:  # each timed alternately with the reference (paired_ms: load drift cancels)
        probe_ms, reference_ms = paired_ms(deployed(probe), deployed(reference), feeds, spec)
        cut = crossing(probe, borders)
        residual = (probe_ms - reference_ms) - (base.additive_ms(probe) - base.additive_ms(reference))
        samples.append((len(cut), sum(b.elements for b in cut), residual))
    cost = fit_border_cost(samples) if any(count for count, _, _ in samples) else BorderCost()
    logger.info("ort borders: %d tensors, %.4f ms each + %.4f ms per million elements (%d probes)",
                len(borders), cost.fixed_ms, cost.per_melement_ms, len(samples))
    result = OrtLatency(base.group_ms, base.float_model_ms, borders, cost)
    if store is not None:
        store.append(STORE_KIND, {
            "group_ms": [[g, str(c), ms] for (g, c), ms in sorted(result.group_ms.items(), key=str)],
            "float_model_ms": result.float_model_ms, "fixed_ms": cost.fixed_ms,
            "per_melement_ms": cost.per_melement_ms, "offset_ms": cost.offset_ms,
        })
    return result


def integer_candidate(group: QuantizerGroup) -> Candidate | None:
    """The group's highest candidate that ORT runs as an integer kernel, if any."""
    return next((c for c in group.candidates if kind_of(c) is KernelKind.INTEGER), None)


def _cached(store: ResultStore | None, analysis: GroupAnalysis) -> OrtLatency | None:
    """The last whole stored measurement covering every group at float and its candidates."""
    if store is None:
        return None
    found = None
    for entry in store.entries(STORE_KIND):
        try:
            times = {(g, Candidate.parse(c)): float(ms) for g, c, ms in entry["group_ms"]}
            cost = BorderCost(float(entry["fixed_ms"]), float(entry["per_melement_ms"]), float(entry["offset_ms"]))
            found = OrtLatency(times, float(entry["float_model_ms"]), (), cost)
        except (KeyError, TypeError, ValueError):
            continue
    if found is None:
        return None
    needed = {(g.id, c) for g in analysis.groups for c in (float_of(g.highest), *g.candidates)}
    return found if needed <= set(found.group_ms) else None

