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
   data (`collect_grams`), only for weights not in the store: one pass for float inputs, one
   walk of the quantized network (per width, unless a plan gives each weight one) otherwise.
3. With `bias_correction`, the same pass's input means give each (weight, bits) the
   corrected bias of its layer (`correct_biases`), for the integers just chosen (from the
   quantized prefix's means when AdaRound runs on it, else the float network's: `bias_inputs`
   overrides); with quantized inputs the walked network
   carries the corrected biases of the layers before. Without AdaRound and with float
   means, no walk is needed: all layers come from one pass.
   `adaround=False` keeps the integers at nearest (only the biases are computed and
   returned): nearest rounding with bias correction.
4. With `output_range`, each output row's scale is first chosen by the layer's output error
   (`output_range`); the new scales are returned with the integers made on them.
5. Inputs from the quantized network are computed segment by segment since version 2 of
   the walk (`INPUTS_VERSION`, in the cache id): ONNX Runtime may round differently than in
   one prefix run, so the former per-layer prefix runs' results are not reused.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from types import MappingProxyType
from typing import Any

import numpy as np
import onnx

from onnxmp import model_io
from onnxmp.calib_data import CalibrationSet
from onnxmp.graph import DataflowGraph, build
from onnxmp.passes.adaround import AdaRoundParams, LayerProblem, adaround, gram_factor, output_error
from onnxmp.passes.collect_grams import GramSettings, InputStats, PrefixGrams, layer_grams
from onnxmp.passes.correct_biases import Biases, corrected_bias, layer_bias, why_not_correctable
from onnxmp.passes.layer_inputs import (
    LinearLayout,
    from_matrices,
    layout_of,
    scale_array,
    to_matrices,
    why_not_linear,
)
from onnxmp.passes.output_range import output_aware_scales, why_not_output_aware
from onnxmp.records import TensorEncoding
from onnxmp.run_records import AdaRoundInputs
from onnxmp.store import ResultStore

logger = logging.getLogger(__name__)

STORE_KIND = "adaround"
INPUTS_VERSION = 2  # of the quantized-network inputs (rule 5); bump when their values change
RoundedWeights = Mapping[tuple[str, int], np.ndarray]  # (weight, bits) -> integers, weight's shape
Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class LayerRounding:
    """What rounding chose per (weight, bits): AdaRounded integers and corrected biases."""

    integers: RoundedWeights = field(default_factory=dict)
    biases: Biases = field(default_factory=dict)
    scales: Mapping[tuple[str, int], tuple[float, ...]] = field(default_factory=dict)  # output-aware ranges


def with_scales(
    encodings: Mapping[tuple[str, int], TensorEncoding], rounding: LayerRounding
) -> dict[tuple[str, int], TensorEncoding]:
    """`encodings` with the output-aware scales `rounding` chose (the integers were made on them)."""
    return {**encodings, **{k: replace(encodings[k], scale=s) for k, s in rounding.scales.items()}}


# the network with these integers and biases: `model`'s node names, weights as fake-quantized float initializers
QuantizedNetwork = Callable[[LayerRounding], onnx.ModelProto]


@dataclass(frozen=True)
class RoundingOptions:
    """What AdaRound does; all of it (but `max_bits`) is part of each result's cache id."""

    params: AdaRoundParams = field(default_factory=AdaRoundParams)
    grams: GramSettings = field(default_factory=GramSettings)
    max_bits: int = 6  # wider weights stay at nearest rounding
    inputs: AdaRoundInputs = AdaRoundInputs.QUANTIZED  # measured: README "AdaRound"
    adaround: bool = field(default=True, repr=False)  # False: nearest integers (for bias correction alone)
    bias_correction: bool = field(default=False, repr=False)  # README "Bias correction"
    # the means bias correction uses; None: the quantized prefix's when AdaRound runs on it, else
    # the float network's (measured: README "Bias correction and output-aware ranges")
    bias_inputs: AdaRoundInputs | None = field(default=None, repr=False)  # repr=False: plain runs' phase-1 keys as before

    @property
    def prefix_means(self) -> bool:
        """Whether bias correction takes E[x_q] from the network quantized so far."""
        if self.bias_inputs is not None:
            return self.bias_inputs is AdaRoundInputs.QUANTIZED
        return self.adaround and self.inputs is AdaRoundInputs.QUANTIZED
    output_range: bool = field(default=False, repr=False)  # scales chosen by the layer-output error (README "Bias correction")


def round_layers(
    model: onnx.ModelProto,
    encodings: Mapping[tuple[str, int], TensorEncoding],
    calib: CalibrationSet,
    *,
    options: RoundingOptions = RoundingOptions(),
    store: ResultStore | None = None,
    quantized: QuantizedNetwork | None = None,
    progress: Progress | None = None,
) -> LayerRounding:
    """AdaRounded integers (and with `options.bias_correction` corrected biases) of every
    roundable (weight, bits) in `encodings`.

    With `options.inputs` QUANTIZED, layers are rounded one after the other in graph order,
    each reconstructing its float output from its inputs in `quantized(rounded so far)`,
    the quantized network the caller builds (AIMET's order), walked forward from layer to
    layer (`collect_grams.PrefixGrams`): once for all layers when each weight has one width
    (a plan's own network), else once per width (each width's network). That network, as
    built before any rounding, is part of every result's cache id.
    """
    graph = build(model)
    tasks = _tasks(graph, encodings, options)
    walk = options.inputs is AdaRoundInputs.QUANTIZED and (options.adaround or options.prefix_means)
    network = _network_id(quantized) if walk and quantized is not None and tasks else ""
    data = calib.fingerprint()
    ids = {t: _result_id(graph, encodings[t], options, data + network) for t in tasks}
    done = {e["id"]: e for e in store.entries(STORE_KIND)} if store is not None else {}
    entries = {t: done[ids[t]] for t in tasks if ids[t] in done}
    logger.info("adaround: %d (weight, bits) pairs, %d from the store", len(tasks), len(entries))
    rounder = _Rounder(graph, encodings, options, ids, store, entries, len(tasks), progress)
    pending = [t for t in tasks if t not in entries]
    layouts = {w: layout_of(graph, w) for w in dict.fromkeys(w for w, _ in pending)}
    if pending and (quantized is None or not walk):  # one pass (nearest with float-mean bias correction too)
        stats = layer_grams(model, list(layouts.values()), calib, options.grams)
        for weight, bits in pending:
            rounder.solve(weight, bits, stats[weight])
    elif pending and quantized is not None:
        for walked in _walks(pending):
            width = dict(walked)
            prefix = PrefixGrams(model, quantized(_rounding(entries, options)), [layouts[w] for w in width], calib, options.grams)
            for step in range(len(prefix.steps)):
                for weight, step_stats in prefix.grams(step).items():
                    rounder.solve(weight, width[weight], step_stats)
                if step + 1 < len(prefix.steps):
                    prefix.update(quantized(_rounding(entries, options)), step)
    return _rounding({t: entries[t] for t in tasks}, options)


def _walks(pending: list[tuple[str, int]]) -> list[list[tuple[str, int]]]:
    """The walks of the quantized network: one when every weight has one width, else one per width."""
    if len({w for w, _ in pending}) == len(pending):
        return [pending]
    return [[(w, b) for w, b in pending if b == bits] for bits in sorted({b for _, b in pending})]


def _network_id(quantized: QuantizedNetwork) -> str:
    """The streamed fingerprint of the unrounded quantized network: walked inputs are that network's."""
    return model_io.fingerprint(quantized(LayerRounding()))


@dataclass(frozen=True)
class _Rounder:
    """Solves one (weight, bits), stores the entry, records it in `entries`."""

    graph: DataflowGraph
    encodings: Mapping[tuple[str, int], TensorEncoding]
    options: RoundingOptions
    ids: Mapping[tuple[str, int], str]
    store: ResultStore | None
    entries: dict[tuple[str, int], dict[str, Any]]
    total: int
    progress: Progress | None

    def solve(self, weight: str, bits: int, stats: InputStats) -> None:
        start = time.perf_counter()
        entry = _solve_layer(self.graph, layout_of(self.graph, weight), self.encodings[(weight, bits)], stats, self.options)
        entry.update(id=self.ids[(weight, bits)], weight=weight, bits=bits, seconds=round(time.perf_counter() - start, 3))
        if self.store is not None:
            self.store.append(STORE_KIND, entry)
        self.entries[(weight, bits)] = entry
        logger.info("adaround %d/%d %s @ %d bits: layer error %.3g -> %.3g (nearest -> adaround), %.1f s", len(self.entries),
                    self.total, weight, bits, entry["error_nearest"], entry["error_adaround"], entry["seconds"])
        if self.progress is not None:
            self.progress(len(self.entries), self.total, f"{weight} @ {bits} bits")


def _rounding(entries: Mapping[tuple[str, int], Mapping[str, Any]], options: RoundingOptions) -> LayerRounding:
    """The integers (AdaRound only) and corrected biases the store entries hold."""
    integers = {t: _decode(e) for t, e in entries.items()} if options.adaround else {}
    biases = {t: _decode_bias(e) for t, e in entries.items() if "bias" in e} if options.bias_correction else {}
    scales = {t: tuple(e["scale"]) for t, e in entries.items() if "scale" in e} if options.output_range else {}
    return LayerRounding(MappingProxyType(integers), MappingProxyType(biases), MappingProxyType(scales))


def _solve_layer(
    graph: DataflowGraph, layout: LinearLayout, enc: TensorEncoding, stats: InputStats, options: RoundingOptions
) -> dict[str, Any]:
    """The store entry of one (weight, bits): AdaRound (or nearest) integers, and the corrected bias."""
    w = graph.constant(layout.weight)
    if options.output_range and why_not_output_aware(layout, enc) is None:
        start = to_matrices(scale_array(enc.scale, enc.axis, w.shape), layout)[:, :, :1]
        rows = output_aware_scales(to_matrices(w.astype(np.float32), layout), stats.g_xx, enc.qmax, start)
        enc = replace(enc, scale=tuple(float(s) for s in rows.reshape(-1)))
    if options.adaround:
        entry = solve(w, layout, enc, stats, options.params)
    else:
        scale = scale_array(enc.scale, enc.axis, w.shape)
        entry = _entry(np.clip(np.round(w / scale), enc.qmin, enc.qmax), enc, nan=float("nan"))
    if options.bias_correction and why_not_correctable(graph, layout) is None:
        w_q = _decode(entry) * scale_array(enc.scale, enc.axis, w.shape)
        bias = corrected_bias(w, w_q, layout, stats, layer_bias(graph, layout), quantized=options.prefix_means)
        entry["bias"] = base64.b64encode(bias.astype(np.float32).tobytes()).decode()
    if options.output_range:
        entry["scale"] = list(enc.scale)
    return entry


def _tasks(
    graph: DataflowGraph, encodings: Mapping[tuple[str, int], TensorEncoding], options: RoundingOptions
) -> list[tuple[str, int]]:
    tasks = []
    for (name, bits), enc in encodings.items():
        if not graph.is_constant(name) or bits > options.max_bits or not enc.signed:
            continue
        reason = why_not_linear(graph, name)
        if reason is None and not options.adaround and not options.output_range:  # bias correction alone
            reason = why_not_correctable(graph, layout_of(graph, name))
        if reason is not None:
            logger.debug("adaround: %s stays at nearest rounding: %s", name, reason)
            continue
        tasks.append((name, bits))
    return tasks


def solve(w: np.ndarray, layout: LinearLayout, enc: TensorEncoding, stats: InputStats, params: AdaRoundParams) -> dict[str, Any]:
    """AdaRound one (weight, bits); a store entry with the integers and both output errors."""
    matrices = to_matrices(w.astype(np.float32), layout)
    scale = to_matrices(scale_array(enc.scale, enc.axis, w.shape), layout)
    g_xx, g_fx = stats.g_xx, stats.g_fx
    target = None if g_fx is None else np.matmul(matrices.astype(np.float64), g_fx - g_xx).astype(np.float32)
    factor = gram_factor(g_xx, params.energy)
    problem = LayerProblem(matrices, scale, enc.qmin, enc.qmax, factor, target, is_gram=factor.shape == g_xx.shape)
    q, _ = adaround(problem, params)
    nearest = np.clip(np.round(matrices / scale), enc.qmin, enc.qmax)
    entry = _entry(from_matrices(q, layout, w.shape), enc, nan=output_error(nearest, problem))
    entry["error_adaround"] = output_error(q, problem)
    return entry


def _entry(q: np.ndarray, enc: TensorEncoding, *, nan: float) -> dict[str, Any]:
    """A store entry holding integers `q` (weight's shape); `nan` is the nearest output error."""
    integers = q.astype(np.int8 if enc.bits <= 8 else np.int16)
    return {
        "shape": list(q.shape), "dtype": integers.dtype.name,
        "integers": base64.b64encode(integers.tobytes()).decode(),
        "error_nearest": nan, "error_adaround": nan,
    }


def _decode(entry: Mapping[str, Any]) -> np.ndarray:
    data = base64.b64decode(entry["integers"])
    return np.frombuffer(data, np.dtype(entry["dtype"])).reshape(entry["shape"]).astype(np.int64)  # type: ignore[no-any-return]


def _decode_bias(entry: Mapping[str, Any]) -> np.ndarray:
    return np.frombuffer(base64.b64decode(entry["bias"]), np.float32).copy()  # type: ignore[no-any-return]


def _result_id(graph: DataflowGraph, enc: TensorEncoding, options: RoundingOptions, data: str) -> str:
    """sha256 of the weight bytes, its layout, bits, scale, the data and hyper-parameters."""
    digest = hashlib.sha256(np.ascontiguousarray(graph.constant(enc.name)).tobytes())
    layout = layout_of(graph, enc.name)
    facts = {
        "layout": repr(layout), "bits": enc.bits, "scale": list(enc.scale), "axis": enc.axis,
        "qrange": [enc.qmin, enc.qmax], "data": data, "params": asdict(options.params),
        "grams": asdict(options.grams), "inputs": options.inputs.value,
    }
    if options.bias_correction or not options.adaround or options.output_range:  # plain AdaRound ids unchanged
        facts.update(bias_correction=options.bias_correction, adaround=options.adaround, output_range=options.output_range)
    if options.bias_correction and not options.prefix_means:
        facts.update(bias_inputs=AdaRoundInputs.FLOAT.value)
    if options.inputs is AdaRoundInputs.QUANTIZED:
        facts["inputs_version"] = INPUTS_VERSION
    digest.update(json.dumps(facts, sort_keys=True).encode())
    return digest.hexdigest()
