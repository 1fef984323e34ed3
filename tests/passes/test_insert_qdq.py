"""insert_qdq: valid QDQ models, integer weight storage, exact sub-8-bit grids, SQNR floors."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx
import onnx.parser
import pytest
from onnx import TensorProto, numpy_helper

from onnxmp import graph as graph_index
from onnxmp import hw_profile, quant_math, runtime
from onnxmp.calib_data import CalibrationSet
from onnxmp.encodings import EncodingSet
from onnxmp.passes.calibrate import calibrate
from onnxmp.passes.insert_qdq import WeightStorage, insert_qdq, insert_quantizers, quantizers_for
from onnxmp.passes.quantizer_groups import quantizer_groups
from onnxmp.records import Candidate, Grid, Plan, TensorEncoding
from tests import builders, oracles

# float_fallbacks reads a weight as a graph input without a batch dim: it cannot be calibrated
QUANTIZABLE = [name for name in builders.BUILDERS if name != "float_fallbacks"]


def _prepare(model, profile="npu"):
    """Canonical model, groups, evaluation feeds and encodings calibrated on those feeds."""
    canon = builders.canonical(model)
    prof = hw_profile.load_profile(profile)
    analysis = quantizer_groups(canon.graph, prof)
    feeds = builders.feeds_for(canon.model, batch=8, seed=1)
    encodings = calibrate(canon.model, canon.graph, analysis, CalibrationSet(feeds), profile=prof)
    return canon, analysis, feeds, encodings


def _uniform(analysis, candidate: Candidate) -> Plan:
    """`candidate` for groups with weights, its activation width for weightless groups."""
    weightless = Candidate(None, candidate.a_bits)
    return Plan({g.id: candidate if g.weights else weightless for g in analysis.groups})


def _qdq(model, candidate, *, profile="npu", weights=WeightStorage.INTEGER):
    canon, analysis, feeds, encodings = _prepare(model, profile)
    plan = _uniform(analysis, candidate)
    return (
        canon,
        insert_qdq(canon.model, analysis=analysis, plan=plan, encodings=encodings, weights=weights),
        feeds,
    )


def _ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


@pytest.mark.parametrize("name", QUANTIZABLE)
def test_w8a8_model_is_valid_and_runs(name):
    canon, qdq, feeds = _qdq(builders.BUILDERS[name](), Candidate(8, 8))
    onnx.checker.check_model(qdq, full_check=True)
    graph_index.build(qdq)  # node names stay unique and non-empty
    assert "QuantizeLinear" in _ops(qdq)
    reference = oracles.run(canon.model, feeds)
    for sim in (True, False):
        sess = runtime.session(qdq, simulate=sim)
        outputs = dict(
            zip([o.name for o in sess.get_outputs()], sess.run(None, feeds), strict=True)
        )
        assert {k: v.shape for k, v in outputs.items()} == {
            k: v.shape for k, v in reference.items()
        }
        assert all(np.isfinite(v).all() for v in outputs.values())


@pytest.mark.parametrize("candidate", [Candidate(8, 8), Candidate(4, 8)])
@pytest.mark.parametrize("name", QUANTIZABLE)
def test_integer_and_fake_float_weights_agree(name, candidate):
    canon, analysis, feeds, encodings = _prepare(builders.BUILDERS[name]())
    plan = _uniform(analysis, candidate)
    stored = {
        ws: insert_qdq(canon.model, analysis=analysis, plan=plan, encodings=encodings, weights=ws)
        for ws in WeightStorage
    }
    oracles.assert_same_outputs(
        stored[WeightStorage.INTEGER], stored[WeightStorage.FAKE_FLOAT], feeds, atol=0
    )
    # the fake-float model has no weight DequantizeLinear: one DQ per activation only
    assert _ops(stored[WeightStorage.FAKE_FLOAT]).count("DequantizeLinear") == _ops(
        stored[WeightStorage.FAKE_FLOAT]
    ).count("QuantizeLinear")


def test_w4_weights_are_int4_initializers():
    canon, analysis, feeds, encodings = _prepare(builders.conv_relu())
    qdq = insert_qdq(
        canon.model, analysis=analysis, plan=Plan({"conv": Candidate(4, 8)}), encodings=encodings
    )
    inits = {init.name: init for init in qdq.graph.initializer}
    assert "w" not in inits  # the float weight is gone
    assert inits["w_quantized"].data_type == TensorProto.INT4
    assert list(inits["w_quantized"].dims) == [4, 3, 3, 3]
    assert inits["w_zero_point"].data_type == TensorProto.INT4
    w_int = numpy_helper.to_array(inits["w_quantized"]).astype(np.int8)
    assert w_int.min() >= -7
    assert w_int.max() <= 7
    # the stored integers are quantize(w / scale[c]) with the calibrated per-channel scales
    w = canon.graph.constant("w")
    scale = np.asarray(encodings[("w", 4)].scale, np.float32)
    np.testing.assert_array_equal(
        w_int, quant_math.quantize(w, scale.reshape(4, 1, 1, 1), 0, -7, 7)
    )
    np.testing.assert_array_equal(numpy_helper.to_array(inits["w_scale"]), scale)
    dq = next(n for n in qdq.graph.node if n.output[0] == "w_dequantized")
    assert dq.op_type == "DequantizeLinear"
    assert onnx.helper.get_attribute_value(dq.attribute[0]) == 0
    assert inits["x_zero_point"].data_type == TensorProto.UINT8


@pytest.mark.parametrize(
    ("bits", "dtype"), [(4, TensorProto.INT4), (6, TensorProto.INT8), (8, TensorProto.INT8)]
)
def test_weight_containers(bits, dtype):
    # 6-bit weights live in int8 restricted to [-31, 31]
    _, qdq, _ = _qdq(builders.conv_relu(), Candidate(bits, 8), profile="research")
    init = next(i for i in qdq.graph.initializer if i.name == "w_quantized")
    assert init.data_type == dtype
    w_int = numpy_helper.to_array(init).astype(np.int8)
    assert np.abs(w_int).max() == 2 ** (bits - 1) - 1


@pytest.mark.parametrize(("bits", "bytes_per_value"), [(4, 0.5), (6, 1), (8, 1)])
def test_integer_weights_are_raw_bytes_of_their_container(bits, bytes_per_value):
    # conv_relu's w is [4, 3, 3, 3]: 108 values, 54 bytes as int4 (two a byte), 108 as int8
    canon, analysis, _, encodings = _prepare(builders.conv_relu(), "research")
    qdq = insert_qdq(
        canon.model, analysis=analysis, plan=Plan({"conv": Candidate(bits, 8)}), encodings=encodings,
        quantize_bias=True,
    )
    inits = {i.name: i for i in qdq.graph.initializer}
    stored, bias = inits["w_quantized"], inits["b_quantized"]
    assert len(stored.raw_data) == 108 * bytes_per_value and not stored.int32_data
    assert (bias.data_type, len(bias.raw_data), bias.int32_data) == (TensorProto.INT32, 4 * 4, [])
    enc = encodings[("w", bits)]
    w = numpy_helper.to_array(next(i for i in canon.model.graph.initializer if i.name == "w"))
    scale = np.asarray(enc.scale, np.float32).reshape(-1, 1, 1, 1)
    expected = quant_math.quantize(w, scale, 0, enc.qmin, enc.qmax)
    np.testing.assert_array_equal(numpy_helper.to_array(stored).astype(np.int64), expected)


def test_6_bit_activation_is_clipped_to_64_levels():
    canon, analysis, feeds, encodings = _prepare(builders.conv_relu(), "research")
    qdq = insert_qdq(
        canon.model, analysis=analysis, plan=Plan({"conv": Candidate(8, 6)}), encodings=encodings
    )
    ops = [
        (n.op_type, n.input[0]) for n in qdq.graph.node if n.op_type in ("Clip", "QuantizeLinear")
    ]
    assert ops == [("Clip", "x"), ("QuantizeLinear", "x_clipped")]
    dequantized = oracles.run(oracles.with_outputs(qdq, ["x_dequantized"]), feeds)["x_dequantized"]
    encoding = encodings[("x", 6)]
    assert (encoding.qmin, encoding.qmax) == (0, 63)
    levels = np.unique(dequantized)
    assert 32 < len(levels) <= 64
    # every value lies on the 6-bit grid scale * (q - zero_point), q in 0..63
    q = np.round(levels / np.float32(encoding.scale[0])) + encoding.zero_point[0]
    assert q.min() >= 0
    assert q.max() <= 63
    np.testing.assert_allclose(
        quant_math.dequantize(q, np.float32(encoding.scale[0]), encoding.zero_point[0]),
        levels,
        rtol=0,
        atol=1e-6,
    )


UNSIGNED = TensorEncoding("x", 8, (0.5,), (3,), Grid.ASYMMETRIC_UNSIGNED)
SIGNED = TensorEncoding("x", 8, (0.5,), (0,), Grid.SYMMETRIC_SIGNED)


@pytest.mark.parametrize(
    ("encoding", "bits", "dtype", "zero_point", "clip"),
    [
        # unsigned, scale 0.5, zero point 3: q in [0, 2^bits - 1] spans [0.5 * (0 - 3), 0.5 * (2^bits - 1 - 3)]
        (UNSIGNED, 2, TensorProto.UINT8, 3, (-1.5, 0.0)),
        (UNSIGNED, 4, TensorProto.UINT8, 3, (-1.5, 6.0)),  # never uint4: ONNX Runtime fuses it into kernels that reject it
        (UNSIGNED, 6, TensorProto.UINT8, 3, (-1.5, 30.0)),
        (UNSIGNED, 8, TensorProto.UINT8, 3, None),
        (UNSIGNED, 12, TensorProto.UINT16, 3, (-1.5, 2046.0)),
        (UNSIGNED, 16, TensorProto.UINT16, 3, None),
        # signed symmetric, scale 0.5: q in [-(2^(bits-1) - 1), 2^(bits-1) - 1]; 8-bit containers store q + 128
        (SIGNED, 4, TensorProto.UINT8, 128, (-3.5, 3.5)),
        (SIGNED, 8, TensorProto.UINT8, 128, None),
        (SIGNED, 12, TensorProto.INT16, 0, (-1023.5, 1023.5)),
    ],
)
def test_activation_containers(encoding, bits, dtype, zero_point, clip):
    canon = builders.canonical(builders.conv_relu())
    quantizers = EncodingSet({}, {"x": replace(encoding, bits=bits)})
    qdq = insert_quantizers(canon.model, quantizers, weights=WeightStorage.INTEGER)
    inits = {i.name: i for i in qdq.graph.initializer}
    (q,) = [n for n in qdq.graph.node if n.op_type == "QuantizeLinear"]
    assert inits[q.input[2]].data_type == dtype
    assert int(numpy_helper.to_array(inits[q.input[2]])) == zero_point
    clips = [n for n in qdq.graph.node if n.op_type == "Clip"]
    if clip is None:
        assert (clips, q.input[0]) == ([], "x")
    else:
        (node,) = clips
        assert (node.input[0], node.output[0]) == ("x", q.input[0])
        bounds = tuple(float(numpy_helper.to_array(inits[name])) for name in node.input[1:])
        assert bounds == clip


@pytest.mark.parametrize("name", QUANTIZABLE)
def test_w8a16_stays_above_40_db(name):
    canon, qdq, feeds = _qdq(builders.BUILDERS[name](), Candidate(8, 16))
    reference, quantized = oracles.run(canon.model, feeds), oracles.run(qdq, feeds)
    for output in reference:
        assert oracles.sqnr_db(reference[output], quantized[output]) >= 40.0, output


def test_w4a8_is_noisier_than_w8a8():
    canon, analysis, feeds, encodings = _prepare(builders.depthwise())
    reference = oracles.run(canon.model, feeds)["y"]
    sqnr = {}
    for candidate in (Candidate(8, 16), Candidate(8, 8), Candidate(4, 8)):
        qdq = insert_qdq(
            canon.model, analysis=analysis, plan=_uniform(analysis, candidate), encodings=encodings
        )
        sqnr[candidate] = oracles.sqnr_db(reference, oracles.run(qdq, feeds)["y"])
    assert sqnr[Candidate(8, 16)] > sqnr[Candidate(8, 8)] > sqnr[Candidate(4, 8)]


@pytest.mark.parametrize("weights", list(WeightStorage))
def test_input_model_is_not_mutated(weights):
    canon, analysis, _, encodings = _prepare(builders.residual_add())
    before = canon.model.SerializeToString()
    insert_qdq(
        canon.model,
        analysis=analysis,
        plan=_uniform(analysis, Candidate(4, 8)),
        encodings=encodings,
        weights=weights,
    )
    assert canon.model.SerializeToString() == before


def test_groups_missing_from_the_plan_stay_float():
    canon, analysis, _, encodings = _prepare(builders.flatten_gemm())
    qdq = insert_qdq(
        canon.model, analysis=analysis, plan=Plan({"fc": Candidate(8, 8)}), encodings=encodings
    )
    inits = {init.name for init in qdq.graph.initializer}
    assert "w" in inits  # conv weight untouched
    assert "fc_w" not in inits
    quantized = [n.input[0] for n in qdq.graph.node if n.op_type == "QuantizeLinear"]
    assert quantized == ["r"]  # not x: the conv group is not in the plan


def test_one_qdq_pair_per_activation_shared_by_consumers():
    _, qdq, _ = _qdq(builders.shared_input_two_convs(), Candidate(8, 8))
    assert [n.input[0] for n in qdq.graph.node if n.op_type == "QuantizeLinear"] == ["x"]
    convs = [n for n in qdq.graph.node if n.op_type == "Conv"]
    assert [n.input[0] for n in convs] == ["x_dequantized", "x_dequantized"]


def test_quantizer_before_flatten_feeds_the_gemm():
    _, qdq, _ = _qdq(builders.flatten_gemm(), Candidate(8, 8))
    nodes = {n.name: n for n in qdq.graph.node}
    assert nodes["flatten"].input[0] == "r_dequantized"
    assert nodes["fc"].input[0] == "f"
    assert nodes["fc"].input[1] == "fc_w_dequantized"


def _input_clip(low: float, high: float) -> onnx.ModelProto:
    #   x[N,3,4,4] ─ clip(low, high) ─► c ─ conv(w[2,3,1,1]) ─► y[N,2,4,4]
    model = onnx.parser.parse_model(builders.HEADER + """
        g (float[N,3,4,4] x) => (float[N,2,4,4] y) {
            [clip] c = Clip (x, lo, hi)
            [conv] y = Conv (c, w)
        }""")
    model.graph.initializer.extend([
        numpy_helper.from_array(np.float32(low), "lo"), numpy_helper.from_array(np.float32(high), "hi"),
        numpy_helper.from_array(np.ones((2, 3, 1, 1), np.float32), "w"),
    ])
    return model


@pytest.mark.parametrize(
    ("low", "high", "dropped"),
    [
        # the 8-bit quantizer of c: scale 0.5, zero point 2 -> its range is [0.5 * (0 - 2), 0.5 * (255 - 2)] = [-1, 126.5]
        (-1.0, 126.5, True),  # the Clip's bounds are the quantizer's range: Q saturates there anyway
        (-5.0, 1000.0, True),
        (-0.9, 126.45, True),  # within a quarter LSB (0.125) of it: Q(-0.9) = 0 and Q(126.45) = 255 still
        (-0.5, 126.5, False),  # one LSB above the lowest level: Q(Clip(x)) is 1 where Q(x) is 0
        (-1.0, 126.0, False),
    ],
)
def test_clip_of_a_graph_input_inside_the_quantizer_range_is_dropped(low, high, dropped):
    # ONNX Runtime 1.19-1.20 cannot load graph input -> Clip -> QuantizeLinear when its ClipQuantFusion removes the Clip
    encoding = TensorEncoding("c", 8, (0.5,), (2,), Grid.ASYMMETRIC_UNSIGNED)
    qdq = insert_quantizers(_input_clip(low, high), EncodingSet({}, {"c": encoding}), weights=WeightStorage.INTEGER)
    ops = [(n.op_type, list(n.input)[:1]) for n in qdq.graph.node]
    if dropped:
        assert ops == [("QuantizeLinear", ["x"]), ("DequantizeLinear", ["c_quantized"]), ("Conv", ["c_dequantized"])]
    else:
        assert ops == [("Clip", ["x"]), ("QuantizeLinear", ["c"]), ("DequantizeLinear", ["c_quantized"]), ("Conv", ["c_dequantized"])]
    x = np.linspace(-3, 130, 3 * 4 * 4 * 2, dtype=np.float32).reshape(2, 3, 4, 4)
    expected = np.clip(np.round(np.clip(x, low, high) / 0.5) + 2, 0, 255) - 2
    np.testing.assert_array_equal(oracles.run(qdq, {"x": x})["y"], np.float32(0.5) * expected.sum(axis=1, keepdims=True).repeat(2, axis=1))


def test_gather_table_weight_only_per_row():
    # npu-transformer quantizes Gather tables weight-only at int8, one scale per row: the table
    # becomes int8 [16, 4] read through a DequantizeLinear on axis 0 with 16 scales
    canon = builders.canonical(builders.position_slice_matmul())
    profile = hw_profile.load_profile("npu-transformer")
    analysis = quantizer_groups(canon.graph, profile)
    calib = CalibrationSet({"ids": np.zeros((4, 5), np.int64)})
    encodings = calibrate(canon.model, canon.graph, analysis, calib, profile=profile)
    assert (encodings[("table", 8)].axis, len(encodings[("table", 8)].scale)) == (0, 16)
    chosen = quantizers_for(canon.model, analysis, Plan({}), encodings, table_bits=8)
    model = insert_quantizers(canon.model, chosen, weights=WeightStorage.INTEGER)
    dq = next(n for n in model.graph.node if n.op_type == "DequantizeLinear")
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    assert (inits[dq.input[0]].dtype, inits[dq.input[0]].shape, inits[dq.input[1]].shape) == (np.int8, (16, 4), (16,))
    assert {a.name: a.i for a in dq.attribute} == {"axis": 0}
    without = insert_qdq(canon.model, analysis=analysis, plan=Plan({}), encodings=encodings)
    assert "DequantizeLinear" not in {n.op_type for n in without.graph.node}  # phase 1 leaves tables float
