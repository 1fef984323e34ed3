"""AdaRounded integer weights for every (weight, bit-width) of a run, cached in a store.

Why: the paper (§3.5) rounds each weight tensor once per weight bit-width, on the float
network, and every configuration reuses those integers: phase 1 measures each candidate
with them, phase 2 / selection / emit stitch them together. So the rounding is computed
once here, before phase 1, and kept in a resumable store keyed by everything that decides
it (weight bytes, layout, bits, scale, calibration, hyper-parameters): a rerun or
`onnxmp search` reads it back instead of recomputing.

Rule cases:
1. Weights whose layer is not a matrix product (`layer_inputs.why_not_linear`) and widths
   above `max_bits` stay at nearest rounding (they are absent from the result).
2. The Gram matrices of the layer inputs come from streaming passes over the calibration
   data (`collect_grams`), only for weights not already in the store: one pass for float
   inputs; for inputs from the quantized network, one walk of it per weight width.
3. Inputs from the quantized network are computed segment by segment since version 2 of
   the walk (`INPUTS_VERSION`, part of the cache id): ONNX Runtime may round differently
   than in one prefix run, so results of the former per-layer prefix runs are not reused.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np
import onnx

from onnxmp.calib_data import CalibrationSet
from onnxmp.graph import DataflowGraph, build
from onnxmp.passes.adaround import AdaRoundParams, LayerProblem, adaround, gram_factor, output_error
from onnxmp.passes.collect_grams import Gram, GramSettings, PrefixGrams, layer_grams
from onnxmp.passes.layer_inputs import (
    LinearLayout,
    from_matrices,
    layout_of,
    scale_array,
    to_matrices,
    why_not_linear,
)
from onnxmp.records import TensorEncoding
from onnxmp.run_records import AdaRoundInputs
from onnxmp.store import ResultStore

logger = logging.getLogger(__name__)

STORE_KIND = "adaround"
INPUTS_VERSION = 2  # of the quantized-network inputs (rule 3); bump when their values change
RoundedWeights = Mapping[tuple[str, int], np.ndarray]  # (weight, bits) -> integers, weight's shape
Progress = Callable[[int, int, str], None]
# the network with these integers: `model`'s node names, weights as fake-quantized float initializers
QuantizedNetwork = Callable[[RoundedWeights], onnx.ModelProto]


@dataclass(frozen=True)
class RoundingOptions:
    """What AdaRound does; all of it (but `max_bits`) is part of each result's cache id."""

    params: AdaRoundParams = field(default_factory=AdaRoundParams)
    grams: GramSettings = field(default_factory=GramSettings)
    max_bits: int = 6  # wider weights stay at nearest rounding
    inputs: AdaRoundInputs = AdaRoundInputs.QUANTIZED  # measured: README "AdaRound"


def round_weights(
    model: onnx.ModelProto,
    encodings: Mapping[tuple[str, int], TensorEncoding],
    calib: CalibrationSet,
    *,
    options: RoundingOptions = RoundingOptions(),
    store: ResultStore | None = None,
    quantized: QuantizedNetwork | None = None,
    progress: Progress | None = None,
) -> RoundedWeights:
    """AdaRounded integers of every roundable (weight, bits) in `encodings`.

    With `options.inputs` QUANTIZED, layers are rounded one after the other in graph order,
    each reconstructing its float output from its inputs in `quantized(rounded so far)`,
    the quantized network the caller builds (AIMET's order), walked forward from layer to
    layer (`collect_grams.PrefixGrams`); each width walks its own network.
    """
    graph = build(model)
    tasks = _tasks(graph, encodings, options.max_bits)
    data = calib.fingerprint()
    ids = {t: _result_id(graph, encodings[t], options, data) for t in tasks}
    done = {e["id"]: e for e in store.entries(STORE_KIND)} if store is not None else {}
    result = {t: _decode(done[ids[t]]) for t in tasks if ids[t] in done}
    logger.info("adaround: %d (weight, bits) pairs, %d from the store", len(tasks), len(result))
    rounder = _Rounder(graph, encodings, options, ids, store, result, len(tasks), progress)
    pending = [t for t in tasks if t not in result]
    layouts = {w: layout_of(graph, w) for w in dict.fromkeys(w for w, _ in pending)}
    if pending and (quantized is None or options.inputs is AdaRoundInputs.FLOAT):
        grams = layer_grams(model, list(layouts.values()), calib, options.grams)
        for weight, bits in pending:
            rounder.solve(weight, bits, grams[weight])
    elif pending and quantized is not None:
        for bits in sorted({b for _, b in pending}):
            prefix = PrefixGrams(model, quantized(result), [layouts[w] for w, b in pending if b == bits], calib, options.grams)
            for step in range(len(prefix.steps)):
                for weight, gram in prefix.grams(step).items():
                    rounder.solve(weight, bits, gram)
                if step + 1 < len(prefix.steps):
                    prefix.update(quantized(result), step)
    return MappingProxyType({t: result[t] for t in tasks})


@dataclass(frozen=True)
class _Rounder:
    """Solves one (weight, bits), stores the entry, records the integers in `result`."""

    graph: DataflowGraph
    encodings: Mapping[tuple[str, int], TensorEncoding]
    options: RoundingOptions
    ids: Mapping[tuple[str, int], str]
    store: ResultStore | None
    result: dict[tuple[str, int], np.ndarray]
    total: int
    progress: Progress | None

    def solve(self, weight: str, bits: int, gram: Gram) -> np.ndarray:
        start = time.perf_counter()
        layout = layout_of(self.graph, weight)
        entry = solve(self.graph.constant(weight), layout, self.encodings[(weight, bits)], gram, self.options.params)
        entry.update(id=self.ids[(weight, bits)], weight=weight, bits=bits, seconds=round(time.perf_counter() - start, 3))
        if self.store is not None:
            self.store.append(STORE_KIND, entry)
        self.result[(weight, bits)] = integers = _decode(entry)
        logger.info("adaround %d/%d %s @ %d bits: layer error %.3g -> %.3g (nearest -> adaround), %.1f s",
                    len(self.result), self.total, weight, bits, entry["error_nearest"], entry["error_adaround"],
                    entry["seconds"])
        if self.progress is not None:
            self.progress(len(self.result), self.total, f"{weight} @ {bits} bits")
        return integers


def _tasks(graph: DataflowGraph, encodings: Mapping[tuple[str, int], TensorEncoding], max_bits: int) -> list[tuple[str, int]]:
    tasks = []
    for (name, bits), enc in encodings.items():
        if not graph.is_constant(name) or bits > max_bits or not enc.signed:
            continue
        reason = why_not_linear(graph, name)
        if reason is not None:
            logger.debug("adaround: %s stays at nearest rounding: %s", name, reason)
            continue
        tasks.append((name, bits))
    return tasks


def solve(
    w: np.ndarray, layout: LinearLayout, enc: TensorEncoding, gram: tuple[np.ndarray, np.ndarray | None],
    params: AdaRoundParams,
) -> dict[str, Any]:
    """AdaRound one (weight, bits); a store entry with the integers and both output errors."""
    matrices = to_matrices(w.astype(np.float32), layout)
    scale = to_matrices(scale_array(enc.scale, enc.axis, w.shape), layout)
    g_xx, g_fx = gram
    target = None if g_fx is None else np.matmul(matrices.astype(np.float64), g_fx - g_xx).astype(np.float32)
    factor = gram_factor(g_xx, params.energy)
    problem = LayerProblem(matrices, scale, enc.qmin, enc.qmax, factor, target, is_gram=factor.shape == g_xx.shape)
    q, _ = adaround(problem, params)
    nearest = np.clip(np.round(matrices / scale), enc.qmin, enc.qmax)
    integers = from_matrices(q, layout, w.shape).astype(np.int8 if enc.bits <= 8 else np.int16)
    return {
        "shape": list(w.shape), "dtype": integers.dtype.name,
        "integers": base64.b64encode(integers.tobytes()).decode(),
        "error_nearest": output_error(nearest, problem), "error_adaround": output_error(q, problem),
    }


def _decode(entry: Mapping[str, Any]) -> np.ndarray:
    data = base64.b64decode(entry["integers"])
    return np.frombuffer(data, np.dtype(entry["dtype"])).reshape(entry["shape"]).astype(np.int64)  # type: ignore[no-any-return]


def _result_id(graph: DataflowGraph, enc: TensorEncoding, options: RoundingOptions, data: str) -> str:
    """sha256 of the weight bytes, its layout, bits, scale, the data and hyper-parameters."""
    digest = hashlib.sha256(np.ascontiguousarray(graph.constant(enc.name)).tobytes())
    layout = layout_of(graph, enc.name)
    facts = {
        "layout": repr(layout), "bits": enc.bits, "scale": list(enc.scale), "axis": enc.axis,
        "qrange": [enc.qmin, enc.qmax], "data": data, "params": asdict(options.params),
        "grams": asdict(options.grams), "inputs": options.inputs.value,
    }
    if options.inputs is AdaRoundInputs.QUANTIZED:
        facts["inputs_version"] = INPUTS_VERSION
    digest.update(json.dumps(facts, sort_keys=True).encode())
    return digest.hexdigest()
