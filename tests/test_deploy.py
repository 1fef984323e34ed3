"""The emitted QDQ model as a deployment runtime sees it: ONNX Runtime's QDQ fusions into
integer kernels, integer initializers, int32 biases, one Q/DQ pair per tensor, Relu/Clip,
`onnx.checker` (full check), and the same on EfficientNet-Lite0 from ../shared."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnx.parser
import pytest
from onnx import TensorProto, numpy_helper

import onnxmp
from onnxmp import calib_data, model_io, runtime
from onnxmp.calib_data import Preprocess
from tests import builders, oracles

REPO = Path(__file__).resolve().parents[1]
DIGITS = REPO / "models" / "digits_cnn.onnx"
DIGITS_CALIB = REPO / "models" / "digits_calib.npz"
DIGITS_EVAL = REPO / "models" / "digits_eval.npz"

# Each Conv/Gemm of the digits CNN: (the activation it reads, its weight, its bias), named as in
# models/digits_cnn.onnx. dw/conv reads MaxPool(residual) and fc1/gemm Flatten(dw): the
# quantizer sits at the producer. stem and proj have no conv bias: BN folding makes one, named
# after the BN's B.
DIGITS_KERNELS = {
    "stem/conv": ("image", "stem.conv.weight", "stem.bn.bias"),
    "branch_a/conv": ("stem", "branch_a.conv.weight", "branch_a.conv.bias"),
    "branch_b/conv": ("stem", "branch_b.conv.weight", "branch_b.conv.bias"),
    "proj/conv": ("concat", "proj.conv.weight", "proj.bn.bias"),
    "dw/conv": ("residual", "dw.conv.weight", "dw.conv.bias"),
    "fc1/gemm": ("dw", "fc1.weight", "fc1.bias"),
    "fc2/gemm": ("fc1", "fc2.weight", "fc2.bias"),
}
FOLDED = {"stem/conv": "stem", "proj/conv": "proj"}
PASS_THROUGH = {"MaxPool", "Flatten"}
RUNS = {
    "W8A8": {"profile": "npu", "bits": "W8A8"},
    "bops0.3": {"profile": "npu", "target_bops": 0.3},
    "research-W6A6": {"profile": "research", "bits": "W6A6", "encodings_version": "0.6.1"},
}
SQNR_FLOOR_DB = 40.0


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """`name -> output dir` of onnxmp.quantize on the digits CNN (RUNS), made on first use."""
    done: dict[str, Path] = {}

    def run(name: str) -> Path:
        if name not in done:
            out = tmp_path_factory.mktemp(name)
            onnxmp.quantize(DIGITS, calib=DIGITS_CALIB, output_dir=out, **RUNS[name])
            done[name] = out
        return done[name]

    return run


def _eval_images() -> np.ndarray:
    with np.load(DIGITS_EVAL) as data:
        return data["image"]


def _initializers(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {init.name: init for init in model.graph.initializer}


def _array(model: onnx.ModelProto, name: str) -> np.ndarray:
    return numpy_helper.to_array(_initializers(model)[name])


def _producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in model.graph.node for o in n.output}


def _consumers(model: onnx.ModelProto, tensor: str) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if tensor in n.input]


def _node(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    (node,) = [n for n in model.graph.node if n.name == name]
    return node


def _encodings_v1(out: Path) -> tuple[dict, dict]:
    data = json.loads((out / "encodings.json").read_text())
    return ({e["name"]: e for e in data["activation_encodings"]}, {e["name"]: e for e in data["param_encodings"]})


def _deployed_vs_simulated(path: Path, feeds: dict[str, np.ndarray], optimized: Path) -> tuple[float, Counter]:
    """SQNR (dB) of ONNX Runtime's fused integer run against the exact QDQ simulation, and the
    op types of the optimized graph ONNX Runtime runs."""
    deployed = runtime.session(str(path), simulate=False, optimization="all", optimized_model_path=str(optimized))
    simulated = runtime.session(str(path))
    sqnr = oracles.sqnr_db(simulated.run(None, feeds)[0], deployed.run(None, feeds)[0])
    return sqnr, Counter(n.op_type for n in onnx.load(str(optimized)).graph.node)


# --- ONNX Runtime's integer kernels ---------------------------------------------------------


def test_w8a8_runs_as_fused_integer_kernels(digits, tmp_path):
    sqnr, ops = _deployed_vs_simulated(digits("W8A8") / "model.qdq.onnx", {"image": _eval_images()}, tmp_path / "opt.onnx")
    print(f"digits W8A8: deployed vs simulated {sqnr:.1f} dB, optimized graph {dict(ops)}")
    assert ops["QLinearConv"] >= 4
    assert ops["QLinearAdd"] >= 1
    assert ops["QLinearConcat"] >= 1
    assert ops["QGemm"] >= 1
    assert ops["Conv"] == 0  # every conv of the digits CNN became an integer kernel
    assert sqnr >= SQNR_FLOOR_DB


def test_mixed_model_deployed_matches_simulation(digits, tmp_path):
    sqnr, ops = _deployed_vs_simulated(digits("bops0.3") / "model.qdq.onnx", {"image": _eval_images()}, tmp_path / "opt.onnx")
    assert ops["QLinearConv"] >= 1
    assert sqnr >= SQNR_FLOOR_DB


# --- integer initializers and int32 biases ---------------------------------------------------


def _candidates_by_node(out: Path) -> dict[str, str]:
    plan = json.loads((out / "plan.json").read_text())
    return {op: group["candidate"] for group in plan["groups"] for op in group["ops"]}


@pytest.mark.parametrize("run", ["W8A8", "bops0.3"])
def test_weights_are_integer_initializers(digits, run):
    out = digits(run)
    qdq = onnx.load(str(out / "model.qdq.onnx"))
    producers, inits = _producers(qdq), _initializers(qdq)
    candidates = _candidates_by_node(out)
    widths = Counter()
    for node_name in DIGITS_KERNELS:
        dq = producers[_node(qdq, node_name).input[1]]
        assert dq.op_type == "DequantizeLinear"
        stored, zero_point = inits[dq.input[0]], inits[dq.input[2]]
        values = numpy_helper.to_array(stored).astype(np.int64)
        w_bits = int(candidates[node_name][1 : candidates[node_name].index("A")])
        widths[w_bits] += 1
        if w_bits == 4:
            assert stored.data_type == TensorProto.INT4
            packed = len(stored.raw_data) if stored.raw_data else len(stored.int32_data)
            assert packed == math.ceil(values.size / 2)  # two 4-bit values per byte
            assert np.abs(values).max() <= 7
        else:
            assert stored.data_type == TensorProto.INT8
            assert np.abs(values).max() <= 127
        assert zero_point.data_type == stored.data_type
        assert not numpy_helper.to_array(zero_point).any()
        bias = inits[producers[_node(qdq, node_name).input[2]].input[0]]
        assert bias.data_type == TensorProto.INT32
    if run == "bops0.3":
        assert widths[4] >= 1 and widths[8] >= 1, widths  # really mixed
    else:
        assert widths == {8: len(DIGITS_KERNELS)}


def _activation_scale(qdq: onnx.ModelProto, tensor: str) -> float:
    """The scale of the DequantizeLinear a kernel input comes from (through MaxPool/Flatten)."""
    producers = _producers(qdq)
    node = producers[tensor]
    while node.op_type in PASS_THROUGH:
        node = producers[node.input[0]]
    assert node.op_type == "DequantizeLinear"
    return float(_array(qdq, node.input[1]))


def _float_bias(original: onnx.ModelProto, node_name: str) -> np.ndarray:
    if node_name not in FOLDED:
        return _array(original, DIGITS_KERNELS[node_name][2]).astype(np.float64)
    prefix = FOLDED[node_name]
    bn = {k: _array(original, f"{prefix}.bn.{v}").astype(np.float64) for k, v in
          (("gamma", "weight"), ("beta", "bias"), ("mean", "running_mean"), ("var", "running_var"))}
    weight = _array(original, f"{prefix}.conv.weight").astype(np.float64)
    return oracles.fold_bn(weight, np.zeros(len(bn["gamma"])), bn, axis=0, eps=1e-5)[1]


def test_bias_scale_is_input_scale_times_weight_scale(digits):
    out = digits("W8A8")
    activations, params = _encodings_v1(out)
    qdq, original = onnx.load(str(out / "model.qdq.onnx")), onnx.load(str(DIGITS))
    producers = _producers(qdq)
    for node_name, (act, weight, bias) in DIGITS_KERNELS.items():
        s_x = activations[act]["scale"][0]
        s_w = np.array(params[weight]["scale"])
        s_b = np.array(params[bias]["scale"])
        assert params[bias]["bw"] == 32 and params[bias]["enc_type"] == "PER_CHANNEL"
        assert len(s_b) == len(s_w) == len(_float_bias(original, node_name))
        np.testing.assert_allclose(s_b, s_x * s_w, rtol=1e-6, err_msg=node_name)
        # the deployed graph agrees with the file: input DQ scale, weight DQ scale, bias DQ scale
        node = _node(qdq, node_name)
        assert _activation_scale(qdq, node.input[0]) == np.float32(s_x)
        np.testing.assert_array_equal(_array(qdq, producers[node.input[1]].input[1]), np.float32(s_w))
        bias_dq = producers[node.input[2]]
        np.testing.assert_array_equal(_array(qdq, bias_dq.input[1]), np.float32(s_b))
        # and the int32 values are the float (folded) bias on that grid
        b_int = _array(qdq, bias_dq.input[0]).astype(np.float64)
        expected = _float_bias(original, node_name)
        np.testing.assert_array_less(np.abs(b_int * s_b - expected), 0.5 * s_b + 1e-6 * np.abs(expected) + 1e-12)


# --- one Q/DQ pair per activation, Relu/Clip -------------------------------------------------


def test_one_quantize_per_activation_shared_by_consumers(digits):
    out = digits("W8A8")
    activations, _ = _encodings_v1(out)
    qdq = onnx.load(str(out / "model.qdq.onnx"))
    quantized = Counter(n.input[0] for n in qdq.graph.node if n.op_type == "QuantizeLinear")
    assert quantized == Counter(set(activations))  # each quantized tensor exactly once
    # "stem" feeds branch_a/conv, branch_b/conv and residual/add through one pair
    (q,) = [n for n in qdq.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "stem"]
    (dq,) = _consumers(qdq, q.output[0])
    assert sorted(n.name for n in _consumers(qdq, dq.output[0])) == ["branch_a/conv", "branch_b/conv", "residual/add"]


def test_tensor_feeding_two_convs_has_one_quantize_linear(tmp_path):
    model = builders.shared_input_two_convs()
    calib = {"x": np.random.default_rng(0).standard_normal((16, 3, 5, 5)).astype(np.float32)}
    result = onnxmp.quantize(model, profile="npu", calib=calib, output_dir=tmp_path, bits="W8A8")
    qdq = onnx.load(str(result.paths["model"]))
    (q,) = [n for n in qdq.graph.node if n.op_type == "QuantizeLinear"]
    assert q.input[0] == "x"
    (dq,) = _consumers(qdq, q.output[0])
    assert sorted(n.name for n in _consumers(qdq, dq.output[0])) == ["conv1", "conv2"]


def test_relu6_clip_is_kept_and_relu_outputs_start_at_zero(digits):
    out = digits("W8A8")
    activations, _ = _encodings_v1(out)
    qdq = onnx.load(str(out / "model.qdq.onnx"))
    clip = _node(qdq, "branch_b/relu6")
    assert clip.op_type == "Clip"
    assert [n.op_type for n in _consumers(qdq, clip.output[0])] == ["QuantizeLinear"]
    assert float(_array(qdq, clip.input[1])) == 0.0 and float(_array(qdq, clip.input[2])) == 6.0
    original = onnx.load(str(DIGITS))
    rectified = [n.output[0] for n in original.graph.node if n.op_type in ("Relu", "Clip")]
    assert sorted(t for t in rectified if t in activations) == ["branch_a", "branch_b", "dw", "fc1", "residual", "stem"]
    for tensor in rectified:
        if tensor in activations:
            assert activations[tensor]["offset"] == [0], tensor  # zero point 0: the range starts at 0
    branch_b = activations["branch_b"]
    assert branch_b["scale"][0] * 255 <= 6.0 * (1 + 1e-6)  # never wider than the ReLU6


# --- onnx.checker and odd bit-widths ---------------------------------------------------------


@pytest.mark.parametrize("run", list(RUNS))
def test_emitted_model_passes_the_full_checker(digits, run):
    model = onnx.load(str(digits(run) / "model.qdq.onnx"))
    onnx.checker.check_model(model, full_check=True)
    assert any(n.op_type == "QuantizeLinear" for n in model.graph.node)


def test_6_bit_activations_are_clipped_to_their_encoding(digits):
    out = digits("research-W6A6")
    data = json.loads((out / "encodings.json").read_text())
    assert data["version"] == "0.6.1"
    qdq = onnx.load(str(out / "model.qdq.onnx"))
    producers = _producers(qdq)
    quantize_nodes = [n for n in qdq.graph.node if n.op_type == "QuantizeLinear"]
    assert len(quantize_nodes) == len(data["activation_encodings"])
    for q in quantize_nodes:
        clip = producers[q.input[0]]
        assert clip.op_type == "Clip", q.name
        (entry,) = data["activation_encodings"][clip.input[0]]
        assert entry["bitwidth"] == 6
        assert float(_array(qdq, clip.input[1])) == pytest.approx(entry["min"], rel=1e-6, abs=1e-12)
        assert float(_array(qdq, clip.input[2])) == pytest.approx(entry["max"], rel=1e-6)
        zero_point = _initializers(qdq)[q.input[2]]
        assert zero_point.data_type == TensorProto.UINT8
        assert 0 <= int(numpy_helper.to_array(zero_point)) <= 63
    assert _node(qdq, "branch_b/relu6").op_type == "Clip"  # the model's own ReLU6 stays too


def test_6_bit_weights_use_int8_within_31(digits):
    qdq = onnx.load(str(digits("research-W6A6") / "model.qdq.onnx"))
    producers, inits = _producers(qdq), _initializers(qdq)
    for node_name in DIGITS_KERNELS:
        stored = inits[producers[_node(qdq, node_name).input[1]].input[0]]
        values = numpy_helper.to_array(stored)
        assert stored.data_type == TensorProto.INT8
        assert np.abs(values.astype(np.int64)).max() == 31, node_name


# --- a bias that int32 cannot hold at s_x * s_w ----------------------------------------------


def _conv_with_a_near_zero_channel() -> onnx.ModelProto:
    #   x[N,3,4,4] ─ conv(w[2,3,3,3], b = [0.5, 3.0], pads 1) ─► y[N,2,4,4]
    #   channel 1 of w is ~1e-6: s_w ~ 1e-8, so b / (s_x * s_w) ~ 1e10 > 2^31
    model = onnx.parser.parse_model(builders.HEADER + """
        g (float[N,3,4,4] x) => (float[N,2,4,4] y) {
            [conv] y = Conv <pads = [1, 1, 1, 1]> (x, w, b)
        }""")
    w = (np.random.default_rng(0).standard_normal((2, 3, 3, 3)) * 0.5).astype(np.float32)
    w[1] *= 1e-6
    model.graph.initializer.extend([
        numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array([0.5, 3.0], np.float32), "b"),
    ])
    return model


def test_bias_beyond_int32_is_still_represented(tmp_path):
    model = _conv_with_a_near_zero_channel()
    calib = {"x": np.random.default_rng(1).standard_normal((8, 3, 4, 4)).astype(np.float32)}
    result = onnxmp.quantize(model, profile="npu", calib=calib, output_dir=tmp_path, bits="W8A8")
    qdq = onnx.load(str(result.paths["model"]))
    producers = _producers(qdq)
    bias_dq = producers[_node(qdq, "conv").input[2]]
    b_int = _array(qdq, bias_dq.input[0]).astype(np.int64)
    assert np.abs(b_int).max() <= 2**31 - 1
    np.testing.assert_allclose(b_int * _array(qdq, bias_dq.input[1]).astype(np.float64), [0.5, 3.0], rtol=1e-3)


# --- EfficientNet-Lite0 from ../shared -------------------------------------------------------


@pytest.mark.shared
@pytest.mark.slow
def test_efficientnet_lite0_w8a8_deploys_as_integer_kernels(shared_dir, tmp_path):
    """On a 50-layer network the integer kernels and the float32 simulation part by one LSB
    wherever float32 accumulation lands within ~0.03 LSB of a rounding boundary; measured
    deployed-vs-simulated SQNR is ~30 dB (it falls layer by layer: 84 dB after 2 groups, 54
    after 12, 30 after 51). What must hold is that deployment costs no quality: its SQNR
    against the float model stays within 0.5 dB of the simulation's."""
    model = model_io.load(shared_dir / "models" / "efficientnet_lite0.onnx")
    calib = calib_data.load_images(shared_dir / "imagenet" / "samples", model, Preprocess.TF, limit=32)
    assert calib.num_samples == 32
    result = onnxmp.quantize(model, profile="npu", calib=calib, output_dir=tmp_path, bits="W8A8")
    sqnr, ops = _deployed_vs_simulated(result.paths["model"], dict(calib.arrays), tmp_path / "opt.onnx")
    float_out = runtime.session(model).run(None, dict(calib.arrays))[0]
    deployed = runtime.session(str(result.paths["model"]), simulate=False).run(None, dict(calib.arrays))[0]
    simulated = runtime.session(str(result.paths["model"])).run(None, dict(calib.arrays))[0]
    deployed_db, simulated_db = oracles.sqnr_db(float_out, deployed), oracles.sqnr_db(float_out, simulated)
    print(f"EfficientNet-Lite0 W8A8: vs float simulated {simulated_db:.2f} dB, deployed {deployed_db:.2f} dB; "
          f"deployed vs simulated {sqnr:.2f} dB; optimized graph {dict(ops)}")
    assert ops["QLinearConv"] >= 40
    assert sqnr >= 25.0
    assert deployed_db >= simulated_db - 0.5
