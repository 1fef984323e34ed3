"""Insert QuantizeLinear/DequantizeLinear for a plan: the simulated and the deployable model.

Why: one function emits both the model phase 1 measures and the model users deploy, so
what was measured is what ships.

Rule cases:
1. A weight becomes an integer initializer (int4 for <= 4 bits, int8 for <= 8, int16 for
   <= 16; narrower widths use the container restricted to their range) read through a
   DequantizeLinear (per-channel along the encoding's axis). With
   `WeightStorage.FAKE_FLOAT` the float initializer is replaced by its dequantized values
   instead (same numbers, no extra node: the fast path of phase 1).
2. An activation gets one Q->DQ pair at the tensor, shared by all its consumers: 2-8 bits
   in uint8, 9-16 in uint16 (int16 for signed grids). A signed 2-8-bit grid is stored in
   uint8 with its zero point shifted by 128 (the same numbers, as ONNX Runtime's own
   S8->U8 rewrite does): with int8 activations ONNX Runtime 1.32 fails to load a model with a
   MaxPool, where its QDQ propagation and that rewrite disagree on the zero point's type.
   Widths narrower than their container get a Clip to the exact range first, so 4- and
   6-bit are simulated exactly.
   Never uint4/int4: ONNX Runtime (1.32, default options) fuses a 4-bit activation DQ into
   QLinearConv or an integer MaxPool, which reject 4-bit types (the model does not load),
   and its Clip->QuantizeLinear rewrite throws on a 4-bit zero point.
2a. A Clip that reads a graph input and whose bounds contain its quantizer's range is
   dropped (Q reads the input; it saturates to the same integers), as ONNX Runtime's
   ClipQuantFusion would: ONNX Runtime 1.19-1.20 fail to load the model when that fusion
   removes a Clip fed by a graph input.
3. Conv/Gemm biases become int32 with scale s_x * s_w per channel when `quantize_bias` is
   set (the profile's `schemes.bias`), so integer kernels need no float bias.
4. Groups missing from the plan stay float.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import replace

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxmp import quant_math
from onnxmp.encodings import EncodingSet
from onnxmp.graph import all_names, outer_reads, unique_name
from onnxmp.records import Grid, GroupAnalysis, Plan, TensorEncoding

Encodings = Mapping[tuple[str, int], TensorEncoding]
ACTIVATION_CONTAINERS = (8, 16)  # bits of the activation integer types
Rounded = Mapping[tuple[str, int], np.ndarray]  # (weight, bits) -> integers in the weight's shape
_INT32_SAFE = 2**31 - 2**8  # headroom for float32 rounding of s_x * s_w


class WeightStorage(enum.Enum):
    INTEGER = "integer"
    FAKE_FLOAT = "fake_float"


def insert_qdq(
    model: onnx.ModelProto,
    *,
    analysis: GroupAnalysis,
    plan: Plan,
    encodings: Encodings,
    weights: WeightStorage = WeightStorage.INTEGER,
    quantize_bias: bool = False,
    rounded: Rounded | None = None,
) -> onnx.ModelProto:
    """Return a copy of `model` with quantizers for every group in `plan`."""
    chosen = quantizers_for(model, analysis, plan, encodings, quantize_bias=quantize_bias, rounded=rounded)
    return insert_quantizers(model, chosen, weights=weights)


def quantizers_for(
    model: onnx.ModelProto, analysis: GroupAnalysis, plan: Plan, encodings: Encodings, *,
    quantize_bias: bool = False, rounded: Rounded | None = None, table_bits: int | None = None,
) -> EncodingSet:
    """Resolve a plan into per-tensor encodings (and int32 bias encodings s_x * s_w).

    `rounded` holds integer weights per (weight, bits) that replace round-to-nearest
    (AdaRound): every configuration stitches in those of its own bit-widths.

    `table_bits` adds the weight-only Gather tables (`analysis.tables`): whole-plan models carry
    them; phase 1 does not (their noise would count once per group in the predicted SQNR).
    """
    weight_encodings: dict[str, TensorEncoding] = {}
    act_encodings: dict[str, TensorEncoding] = {}
    integers: dict[str, np.ndarray] = {}
    for group in analysis.groups:
        candidate = plan.get(group.id)
        if candidate is None:
            continue
        w_bits = candidate.w_bits  # None only for groups without weights
        weight_encodings.update({w: encodings[(w, w_bits)] for w in group.weights if w_bits is not None})
        act_encodings.update({t: encodings[(t, candidate.a_bits)] for t in group.activations})
        if rounded is not None and w_bits is not None:
            integers.update({w: rounded[(w, w_bits)] for w in group.weights if (w, w_bits) in rounded})
    if table_bits is not None:
        weight_encodings.update({t: encodings[(t, table_bits)] for t in analysis.tables})
    biases = _bias_encodings(model, analysis, weight_encodings, act_encodings) if quantize_bias else {}
    # a weight whose scale grew to keep its bias in int32 falls back to nearest rounding
    kept = {w: q for w, q in integers.items() if weight_encodings[w] is encodings[(w, weight_encodings[w].bits)]}
    return EncodingSet(weight_encodings, act_encodings, biases, kept)


def _bias_encodings(
    model: onnx.ModelProto,
    analysis: GroupAnalysis,
    weight_enc: dict[str, TensorEncoding],
    act_enc: Mapping[str, TensorEncoding],
) -> dict[str, TensorEncoding]:
    """Conv/Gemm biases as int32 with scale s_x * s_w (per output channel).

    A channel whose bias would overflow int32 (a near-zero weight channel has a tiny s_w)
    gets a larger weight scale, s_w >= |b| / (s_x * (2^31 - 1)), written back into
    `weight_enc`, so integer kernels keep bias scale = s_x * s_w exactly.
    """
    constants = {init.name: init for init in model.graph.initializer}
    result = {}
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 3 or node.input[2] not in constants:
            continue
        anchor = analysis.anchors.get(node.input[0], node.input[0])
        if node.input[1] not in weight_enc or anchor not in act_enc:
            continue
        s_x = act_enc[anchor].scale[0]
        bias = np.abs(numpy_helper.to_array(constants[node.input[2]]).astype(np.float64))
        s_w = np.asarray(weight_enc[node.input[1]].scale, np.float64)
        needed = bias / (s_x * _INT32_SAFE) if s_w.size == bias.size else np.zeros_like(s_w)
        if np.any(needed > s_w):
            s_w = np.maximum(s_w, needed)
            weight_enc[node.input[1]] = replace(weight_enc[node.input[1]], scale=tuple(float(np.float32(v)) for v in s_w))
            s_w = np.asarray(weight_enc[node.input[1]].scale, np.float64)
        scale = tuple(float(v) for v in np.float32(s_x * s_w))
        axis = None if weight_enc[node.input[1]].axis is None else 0
        result[node.input[2]] = TensorEncoding(node.input[2], 32, scale, (0,) * len(scale), Grid.SYMMETRIC_SIGNED, axis)
    return result


def insert_quantizers(model: onnx.ModelProto, quantizers: EncodingSet, *, weights: WeightStorage) -> onnx.ModelProto:
    """Return a copy of `model` with a DequantizeLinear per weight/bias and a Q/DQ pair per activation."""
    result = onnx.ModelProto()
    result.CopyFrom(model)
    graph = result.graph
    taken = all_names(result)
    weight_nodes: list[onnx.NodeProto] = []
    act_nodes: dict[str, list[onnx.NodeProto]] = {}
    renamed: dict[str, str] = {}
    initializers = {init.name: init for init in graph.initializer}
    for name, enc in (*quantizers.weights.items(), *quantizers.biases.items()):
        w_int = quantizers.integers.get(name)
        if weights is WeightStorage.FAKE_FLOAT:
            initializers[name].CopyFrom(_fake_quantized(initializers[name], enc, w_int))
        else:
            nodes, new_inits, renamed[name] = _dequantized_weight(initializers[name], enc, taken, w_int)
            weight_nodes.extend(nodes)
            graph.initializer.extend(new_inits)
    producers = {out: node for node in graph.node for out in node.output}
    free_inputs = {i.name for i in graph.input} - set(quantizers.activations)
    outputs = {o.name for o in graph.output}
    dropped: dict[int, str] = {}  # id(Clip) -> the tensor whose Q/DQ takes its place (rule 2a)
    for tensor, enc in quantizers.activations.items():
        clip, source = producers.get(tensor), tensor
        if clip is not None and clip.input[0] in free_inputs and tensor not in outputs and _clip_contains(clip, enc, initializers):
            source, dropped[id(clip)] = clip.input[0], tensor
        nodes, inits, renamed[tensor] = _qdq_pair(tensor, enc, taken, source=source)
        act_nodes[tensor] = nodes
        graph.initializer.extend(inits)
    _rewire(graph, renamed, weight_nodes, act_nodes, dropped)
    used = {t for n in graph.node for t in (*n.input, *outer_reads(n))} | {o.name for o in graph.output}
    kept = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return result


def _rewire(
    graph: onnx.GraphProto,
    renamed: Mapping[str, str],
    weight_nodes: list[onnx.NodeProto],
    act_nodes: Mapping[str, list[onnx.NodeProto]],
    dropped: Mapping[int, str],
) -> None:
    """Point consumers at the dequantized tensors and place Q/DQ right after producers
    (a dropped Clip's place goes to the Q/DQ of its output)."""
    new_nodes = list(weight_nodes)
    inserted = {id(n) for nodes in act_nodes.values() for n in nodes}
    inserted.update(id(n) for n in weight_nodes)
    for tensor in (i.name for i in graph.input):
        new_nodes.extend(act_nodes.get(tensor, ()))
    for node in graph.node:
        if id(node) in dropped:
            new_nodes.extend(act_nodes[dropped[id(node)]])
            continue
        new_nodes.append(node)
        for out in node.output:
            new_nodes.extend(act_nodes.get(out, ()))
    for node in new_nodes:
        if id(node) in inserted:
            continue
        for i, name in enumerate(node.input):
            if name in renamed:
                node.input[i] = renamed[name]
    del graph.node[:]
    graph.node.extend(new_nodes)


def _weight_dtype(bits: int) -> int:
    if bits > 16:
        return TensorProto.INT32
    return TensorProto.INT4 if bits <= 4 else TensorProto.INT8 if bits <= 8 else TensorProto.INT16


def activation_container(bits: int) -> int:
    """Bits of the integer type that holds a `bits`-wide activation grid (rule 2)."""
    return next(c for c in ACTIVATION_CONTAINERS if bits <= c)


def _activation_storage(enc: TensorEncoding) -> tuple[int, int]:
    """The integer type and the stored zero point of an activation (rule 2)."""
    if activation_container(enc.bits) == 8:
        return TensorProto.UINT8, enc.zero_point[0] + (128 if enc.signed else 0)
    return (TensorProto.INT16 if enc.signed else TensorProto.UINT16), enc.zero_point[0]


def _integers(w: np.ndarray, enc: TensorEncoding, w_int: np.ndarray | None) -> np.ndarray:
    """The weight's integers: the given ones (AdaRound), else round to nearest."""
    if w_int is not None:
        return w_int
    scale = np.asarray(enc.scale, np.float32).reshape(quant_math.broadcast_shape(w.ndim, enc.axis))
    return quant_math.quantize(w, scale, 0, enc.qmin, enc.qmax)


def _fake_quantized(init: onnx.TensorProto, enc: TensorEncoding, w_int: np.ndarray | None) -> onnx.TensorProto:
    w = numpy_helper.to_array(init)
    scale = np.asarray(enc.scale, np.float32).reshape(quant_math.broadcast_shape(w.ndim, enc.axis))
    values = quant_math.dequantize(_integers(w, enc, w_int), scale, 0)
    return numpy_helper.from_array(values.astype(w.dtype), init.name)


def _dequantized_weight(
    init: onnx.TensorProto, enc: TensorEncoding, taken: set[str], w_int: np.ndarray | None
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto], str]:
    w = numpy_helper.to_array(init)
    scale = np.asarray(enc.scale, np.float32)
    w_int = _integers(w, enc, w_int)
    dtype = _weight_dtype(enc.bits)
    q_name = unique_name(taken, f"{init.name}_quantized")
    s_name = unique_name(taken, f"{init.name}_scale")
    z_name = unique_name(taken, f"{init.name}_zero_point")
    out = unique_name(taken, f"{init.name}_dequantized")
    zp_shape = [len(scale)] if enc.axis is not None else []
    inits = [
        # raw data in the storage type: int8 a byte, int4 packed two to a byte (not int32_data varints)
        numpy_helper.from_array(w_int.astype(helper.tensor_dtype_to_np_dtype(dtype)), q_name),
        numpy_helper.from_array(scale if enc.axis is not None else scale.reshape(()), s_name),
        helper.make_tensor(z_name, dtype, zp_shape, [0] * (len(scale) if zp_shape else 1)),
    ]
    attrs = {"axis": enc.axis} if enc.axis is not None else {}
    node = helper.make_node(  # onnx's stub types **kwargs like doc_string
        "DequantizeLinear", [q_name, s_name, z_name], [out], name=unique_name(taken, f"{init.name}_DequantizeLinear"),
        **attrs,  # type: ignore[arg-type]
    )
    return [node], inits, out


def _clip_contains(node: onnx.NodeProto, enc: TensorEncoding, constants: Mapping[str, onnx.TensorProto]) -> bool:
    """Whether `node` is a Clip with constant bounds that the quantizer maps to qmin and qmax
    anyway (a quarter-LSB margin for float rounding), so Q(Clip(x)) == Q(x) for every x."""
    bounds = [*node.input[1:3], "", ""][:2]
    if node.op_type != "Clip" or any(b and b not in constants for b in bounds):
        return False
    low, high = (float(numpy_helper.to_array(constants[b])) if b else d for b, d in zip(bounds, (-math.inf, math.inf), strict=True))
    scale, zero_point = float(np.float32(enc.scale[0])), enc.zero_point[0]
    return low / scale + zero_point <= enc.qmin + 0.25 and high / scale + zero_point >= enc.qmax - 0.25


def _qdq_pair(
    tensor: str, enc: TensorEncoding, taken: set[str], *, source: str
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto], str]:
    """Clip (for a grid narrower than its container), Q and DQ of `tensor`, reading `source`."""
    dtype, zero_point = _activation_storage(enc)
    s_name = unique_name(taken, f"{tensor}_scale")
    z_name = unique_name(taken, f"{tensor}_zero_point")
    inits = [
        numpy_helper.from_array(np.asarray(enc.scale[0], np.float32), s_name),
        helper.make_tensor(z_name, dtype, [], [zero_point]),
    ]
    nodes = []
    if enc.bits not in ACTIVATION_CONTAINERS:
        low, high = quant_math.dequantize(np.array([enc.qmin, enc.qmax]), np.float32(enc.scale[0]), enc.zero_point[0])
        lo_name, hi_name = unique_name(taken, f"{tensor}_clip_min"), unique_name(taken, f"{tensor}_clip_max")
        inits += [numpy_helper.from_array(np.float32(low), lo_name), numpy_helper.from_array(np.float32(high), hi_name)]
        clipped = unique_name(taken, f"{tensor}_clipped")
        nodes.append(helper.make_node("Clip", [source, lo_name, hi_name], [clipped], name=unique_name(taken, f"{tensor}_Clip")))
        source = clipped
    quantized = unique_name(taken, f"{tensor}_quantized")
    out = unique_name(taken, f"{tensor}_dequantized")
    nodes.append(helper.make_node("QuantizeLinear", [source, s_name, z_name], [quantized], name=unique_name(taken, f"{tensor}_QuantizeLinear")))
    nodes.append(helper.make_node("DequantizeLinear", [quantized, s_name, z_name], [out], name=unique_name(taken, f"{tensor}_DequantizeLinear")))
    return nodes, inits, out
