"""AIMET encodings JSON: the offset convention by hand, round trips, the golden file, names of
the user's model, malformed files, and `apply` (pipeline and CLI) on the shipped digits CNN."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

import onnxmp
from onnxmp import apply, encodings, runtime
from onnxmp.cli import main
from onnxmp.errors import EncodingsError
from onnxmp.records import Grid, TensorEncoding
from tests import builders, oracles
from tests.golden import regenerate

REPO = Path(__file__).resolve().parents[1]
DIGITS = REPO / "models" / "digits_cnn.onnx"
DIGITS_CALIB = REPO / "models" / "digits_calib.npz"
GOLDEN = Path(__file__).resolve().parent / "golden"

# The digits CNN's tensors that carry an encoding (names of models/digits_cnn.onnx).
# stem/conv and proj/conv have no bias: the bias made by BN folding stands for the BN's B.
DIGITS_ACTIVATIONS = {"image", "stem", "branch_a", "branch_b", "concat", "proj", "residual", "dw", "fc1"}
DIGITS_PARAMS = {
    "stem.conv.weight", "stem.bn.bias", "branch_a.conv.weight", "branch_a.conv.bias",
    "branch_b.conv.weight", "branch_b.conv.bias", "proj.conv.weight", "proj.bn.bias",
    "dw.conv.weight", "dw.conv.bias", "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias",
}
BUDGETS = {"W8A8": {"bits": "W8A8"}, "bops0.3": {"target_bops": 0.3}}


def _digits_images() -> np.ndarray:
    with np.load(DIGITS_CALIB) as data:
        return data["image"]


def _outputs(path: Path, images: np.ndarray) -> np.ndarray:
    return runtime.session(str(path)).run(["logits"], {"image": images})[0]


def _tensor_names(model: onnx.ModelProto) -> set[str]:
    graph = model.graph
    names = {t for node in graph.node for t in (*node.input, *node.output) if t}
    return names | {v.name for v in (*graph.input, *graph.output, *graph.initializer)}


def _initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}


@pytest.fixture(scope="module")
def digits_runs(tmp_path_factory):
    """`(budget, version) -> output dir` of onnxmp.quantize on the digits CNN, made on first use."""
    runs: dict[tuple[str, str], Path] = {}

    def run(budget: str, version: str = "1.0.0") -> Path:
        if (budget, version) not in runs:
            out = tmp_path_factory.mktemp(f"digits-{budget}-{version}")
            onnxmp.quantize(
                DIGITS, profile="npu", calib=DIGITS_CALIB, output_dir=out, encodings_version=version, **BUDGETS[budget]
            )
            runs[(budget, version)] = out
        return runs[(budget, version)]

    return run


# --- the AIMET integer convention, by hand -------------------------------------------------


def test_unsigned_8_bit_offset_is_minus_the_zero_point():
    # x_int = round(x / 0.1) - offset on [0, 255]; zero point 10 -> offset -10,
    # min = 0.1 * -10 = -1.0, max = 0.1 * (255 - 10) = 24.5
    enc = TensorEncoding("act", 8, (0.1,), (10,), grid=Grid.ASYMMETRIC_UNSIGNED)
    codes = encodings.EncodingSet(weights={}, activations={"act": enc})

    v1 = json.loads(encodings.to_json(codes, version="1.0.0"))
    assert v1["version"] == "1.0.0"
    assert v1["param_encodings"] == []
    assert v1["activation_encodings"] == [
        {"name": "act", "dtype": "INT", "bw": 8, "is_sym": False, "enc_type": "PER_TENSOR", "scale": [0.1], "offset": [-10]}
    ]

    v061 = json.loads(encodings.to_json(codes, version="0.6.1"))
    assert v061["version"] == "0.6.1"
    assert v061["param_encodings"] == {}
    (entry,) = v061["activation_encodings"]["act"]
    assert {k: entry[k] for k in ("bitwidth", "dtype", "is_symmetric", "offset", "scale")} == {
        "bitwidth": 8, "dtype": "int", "is_symmetric": "False", "offset": -10, "scale": 0.1,
    }
    assert entry["min"] == pytest.approx(-1.0, rel=1e-12)
    assert entry["max"] == pytest.approx(24.5, rel=1e-12)


def test_signed_symmetric_4_bit_per_channel_weight_has_offset_minus_8():
    # signed 4-bit on an unsigned AIMET grid: offset -2^3 = -8 on every channel,
    # min = -8 s, max = s * (15 - 8) = 7 s
    scales = (0.5, 0.25, 0.125)
    enc = TensorEncoding("w", 4, scales, (0, 0, 0), grid=Grid.SYMMETRIC_SIGNED, axis=0)
    codes = encodings.EncodingSet(weights={"w": enc}, activations={})

    v1 = json.loads(encodings.to_json(codes, version="1.0.0"))
    assert v1["param_encodings"] == [
        {"name": "w", "dtype": "INT", "bw": 4, "is_sym": True, "enc_type": "PER_CHANNEL",
         "scale": [0.5, 0.25, 0.125], "offset": [-8, -8, -8]}
    ]

    entries = json.loads(encodings.to_json(codes, version="0.6.1"))["param_encodings"]["w"]
    assert [e["offset"] for e in entries] == [-8, -8, -8]
    assert [e["is_symmetric"] for e in entries] == ["True", "True", "True"]
    assert [e["bitwidth"] for e in entries] == [4, 4, 4]
    assert [e["min"] for e in entries] == [-4.0, -2.0, -1.0]  # -8 * s
    assert [e["max"] for e in entries] == [3.5, 1.75, 0.875]  # 7 * s


def test_versions_are_an_enum_of_the_format_strings():
    assert [v.value for v in encodings.Version] == ["1.0.0", "0.6.1"]
    codes = encodings.EncodingSet({}, {"act": TensorEncoding("act", 8, (0.1,), (3,), Grid.ASYMMETRIC_UNSIGNED)})
    assert encodings.to_json(codes, version=encodings.Version.V0_6_1) == encodings.to_json(codes, version="0.6.1")
    assert json.loads(encodings.to_json(codes))["version"] == "1.0.0"


def test_unknown_version_is_an_encodings_error():
    with pytest.raises(EncodingsError, match="2.0.0"):
        encodings.to_json(encodings.EncodingSet({}, {}), version="2.0.0")


# --- to_json / from_json round trips ---------------------------------------------------------

ROUND_TRIP_SET = encodings.EncodingSet(
    weights={
        "conv.weight": TensorEncoding("conv.weight", 8, (0.02, 0.03, 0.5), (0, 0, 0), Grid.SYMMETRIC_SIGNED, axis=0),
        "fc.weight": TensorEncoding("fc.weight", 4, (0.125,), (0,), Grid.SYMMETRIC_SIGNED),
    },
    biases={"conv.bias": TensorEncoding("conv.bias", 32, (1e-4, 2e-4, 3e-3), (0, 0, 0), Grid.SYMMETRIC_SIGNED, axis=0)},
    activations={
        "relu": TensorEncoding("relu", 8, (0.05,), (0,), Grid.ASYMMETRIC_UNSIGNED),
        "input": TensorEncoding("input", 8, (0.027,), (143,), Grid.ASYMMETRIC_UNSIGNED),
        "add": TensorEncoding("add", 16, (3.5e-5,), (30000,), Grid.ASYMMETRIC_UNSIGNED),
    },
)


@pytest.mark.parametrize("version", encodings.FORMATS)
def test_round_trip_gives_equal_records(version):
    text = encodings.to_json(ROUND_TRIP_SET, version=version)
    back = encodings.from_json(text)
    assert dict(back.weights) == dict(ROUND_TRIP_SET.weights)  # params of 17 bits or more are biases
    assert dict(back.biases) == dict(ROUND_TRIP_SET.biases)
    assert dict(back.activations) == dict(ROUND_TRIP_SET.activations)
    assert encodings.to_json(back, version=version) == text


@pytest.mark.parametrize("version", encodings.FORMATS)
def test_per_channel_axis_comes_back_as_placeholder_0(version):
    # the files carry no axis: from_json says "per channel" with axis 0, and apply_encodings
    # puts the real axis back from the graph (see test_apply_puts_the_gemm_axis_back)
    enc = TensorEncoding("fc.weight", 8, (0.1, 0.2), (0, 0), Grid.SYMMETRIC_SIGNED, axis=1)
    back = encodings.from_json(encodings.to_json(encodings.EncodingSet({"fc.weight": enc}, {}), version=version))
    assert back.params["fc.weight"].axis == 0
    assert back.params["fc.weight"].scale == (0.1, 0.2)


def test_one_channel_per_channel_encoding_is_per_tensor_in_0_6_1():
    # 0.6.1 has no enc_type: a list of one entry reads as per tensor; 1.0.0 keeps PER_CHANNEL
    enc = TensorEncoding("w", 8, (0.1,), (0,), Grid.SYMMETRIC_SIGNED, axis=0)
    codes = encodings.EncodingSet({"w": enc}, {})
    assert encodings.from_json(encodings.to_json(codes, version="1.0.0")).params["w"].axis == 0
    assert encodings.from_json(encodings.to_json(codes, version="0.6.1")).params["w"].axis is None


# --- golden file -----------------------------------------------------------------------------


def _structure(data: dict) -> dict:
    """Everything but the scales, and the scales' list lengths."""
    def entry(e: dict) -> dict:
        return {**{k: v for k, v in e.items() if k != "scale"}, "scale_count": len(e["scale"])}

    return {
        **{k: v for k, v in data.items() if k not in ("activation_encodings", "param_encodings")},
        "activation_encodings": [entry(e) for e in data["activation_encodings"]],
        "param_encodings": [entry(e) for e in data["param_encodings"]],
    }


def test_conv_bn_w8a8_encodings_match_the_golden_file(tmp_path):
    """Regenerate with `python tests/golden/regenerate.py` and review the diff."""
    name = "conv_bn_w8a8.encodings.json"
    produced = json.loads(regenerate.GOLDEN[name](tmp_path))
    golden = json.loads((GOLDEN / name).read_text())
    assert _structure(produced) == _structure(golden)
    for section in ("activation_encodings", "param_encodings"):
        for got, want in zip(produced[section], golden[section], strict=True):
            np.testing.assert_allclose(got["scale"], want["scale"], rtol=1e-6, atol=0, err_msg=got["name"])
    # what the golden file says, spelled out: the folded weight under the conv's name
    assert [e["name"] for e in golden["param_encodings"]] == ["b", "w"]
    assert [e["name"] for e in golden["activation_encodings"]] == ["x"]
    assert [e["bw"] for e in golden["param_encodings"]] == [32, 8]


# --- names refer to the user's original model -----------------------------------------------


def test_every_name_is_a_tensor_of_the_original_model(digits_runs):
    out = digits_runs("W8A8")
    data = json.loads((out / "encodings.json").read_text())
    original = _tensor_names(onnx.load(str(DIGITS)))
    names = [e["name"] for s in ("activation_encodings", "param_encodings") for e in data[s]]
    assert set(names) <= original
    assert {e["name"] for e in data["activation_encodings"]} == DIGITS_ACTIVATIONS
    assert {e["name"] for e in data["param_encodings"]} == DIGITS_PARAMS
    assert json.loads((out / "plan.json").read_text())["encodings_absent"] == []


def _dequantize_inputs(model: onnx.ModelProto) -> dict[tuple[str, int], onnx.NodeProto]:
    """(consumer node name, input slot) -> the DequantizeLinear that feeds it."""
    dq = {n.output[0]: n for n in model.graph.node if n.op_type == "DequantizeLinear"}
    return {(n.name, i): dq[t] for n in model.graph.node for i, t in enumerate(n.input) if t in dq}


def test_folded_weights_are_named_like_the_original_conv_weights(digits_runs):
    out = digits_runs("W8A8")
    data = json.loads((out / "encodings.json").read_text())
    params = {e["name"]: e for e in data["param_encodings"]}
    qdq = onnx.load(str(out / "model.qdq.onnx"))
    inits = _initializers(qdq)
    feeds = _dequantize_inputs(qdq)
    original = _initializers(onnx.load(str(DIGITS)))
    for prefix in ("stem", "proj"):
        dq = feeds[(f"{prefix}/conv", 1)]
        assert params[f"{prefix}.conv.weight"]["scale"] == inits[dq.input[1]].tolist()  # as deployed
        # the named encoding is the folded weight's: integers * its scales give folded values
        weight = original[f"{prefix}.conv.weight"]
        bn = {k: original[f"{prefix}.bn.{v}"] for k, v in
              (("gamma", "weight"), ("beta", "bias"), ("mean", "running_mean"), ("var", "running_var"))}
        folded, _ = oracles.fold_bn(weight, np.zeros(16, np.float32), bn, axis=0, eps=1e-5)
        scale = np.array(params[f"{prefix}.conv.weight"]["scale"]).reshape(-1, 1, 1, 1)
        deployed = inits[dq.input[0]].astype(np.float64) * scale
        assert oracles.sqnr_db(folded, deployed) > 35
        assert oracles.sqnr_db(weight, deployed) < 0


@pytest.mark.parametrize("budget", list(BUDGETS))
def test_every_quantized_tensor_of_the_emitted_model_is_listed(digits_runs, budget):
    out = digits_runs(budget)
    data = json.loads((out / "encodings.json").read_text())
    absent = json.loads((out / "plan.json").read_text())["encodings_absent"]
    assert all(a["reason"] for a in absent)
    listed_params = {e["name"] for e in data["param_encodings"]}
    listed_acts = {e["name"] for e in data["activation_encodings"]}
    qdq = onnx.load(str(out / "model.qdq.onnx"))
    original = {n.name: n for n in onnx.load(str(DIGITS)).graph.node}
    producers = {o: n for n in qdq.graph.node for o in n.output}
    param_dqs = 0
    for (consumer, slot), dq in _dequantize_inputs(qdq).items():
        source = producers.get(dq.input[0])
        if source is not None:  # an activation: DQ <- Q <- (Clip for odd widths) <- tensor
            assert source.op_type == "QuantizeLinear"
            tensor = source.input[0]
            if tensor in producers and producers[tensor].op_type == "Clip" and producers[tensor].name.endswith("_Clip"):
                tensor = producers[tensor].input[0]
            assert tensor in listed_acts or tensor in {a["tensor"] for a in absent}, tensor
            continue
        param_dqs += 1
        user_node = original[consumer]
        if slot < len(user_node.input):  # the user's own weight or bias
            assert user_node.input[slot] in listed_params, (consumer, slot)
    assert param_dqs == len(listed_params) + len([a for a in absent if a["tensor"] not in listed_acts])
    assert len([n for n in qdq.graph.node if n.op_type == "QuantizeLinear"]) == len(listed_acts)


# --- malformed files -------------------------------------------------------------------------

_V1_ENTRY = {"name": "image", "dtype": "INT", "bw": 8, "is_sym": False, "enc_type": "PER_TENSOR", "scale": [0.1], "offset": [0]}
MALFORMED = {
    "not JSON": '{"version": "1.0.0", ',
    "a JSON list": "[]",
    "no sections": json.dumps({"version": "1.0.0", "excluded_layers": []}),
    "float dtype 1.0.0": json.dumps({
        "version": "1.0.0", "param_encodings": [],
        "activation_encodings": [{**_V1_ENTRY, "dtype": "FLOAT", "bw": 16}],
    }),
    "float dtype 0.6.1": json.dumps({
        "version": "0.6.1", "param_encodings": {},
        "activation_encodings": {"image": [{"bitwidth": 16, "dtype": "float"}]},
    }),
    "entry without scale": json.dumps({
        "activation_encodings": [{k: v for k, v in _V1_ENTRY.items() if k != "scale"}], "param_encodings": [],
    }),
    "non-integer bitwidth": json.dumps({"activation_encodings": [{**_V1_ENTRY, "bw": "eight"}], "param_encodings": []}),
}
MALFORMED_BUGS = [
    pytest.param(
        json.dumps({"activation_encodings": "image", "param_encodings": []}), id="section is a string",
    ),
    pytest.param(
        json.dumps({"version": "0.6.1", "activation_encodings": {"image": []}, "param_encodings": {}}), id="empty 0.6.1 entry list",
    ),
    pytest.param(
        json.dumps({"activation_encodings": [{**_V1_ENTRY, "scale": [0.1, 0.2]}], "param_encodings": []}), id="scale and offset lengths differ",
    ),
]


@pytest.mark.parametrize("text", [*MALFORMED.values(), *MALFORMED_BUGS], ids=[*MALFORMED, *(p.id for p in MALFORMED_BUGS)])
def test_malformed_file_is_one_line_encodings_error(text):
    with pytest.raises(EncodingsError) as info:
        encodings.from_json(text, where="user.encodings")
    message = str(info.value)
    assert message.startswith("user.encodings: ")
    assert "\n" not in message


def test_float_dtype_error_names_the_tensor():
    with pytest.raises(EncodingsError, match=r"activation_encodings: .*image: dtype FLOAT"):
        encodings.from_json(MALFORMED["float dtype 1.0.0"], where="user.encodings")


# --- quantize -> encodings -> apply ----------------------------------------------------------


@pytest.mark.parametrize("version", encodings.FORMATS)
@pytest.mark.parametrize("budget", list(BUDGETS))
def test_apply_reproduces_the_emitted_model(digits_runs, tmp_path, budget, version):
    out = digits_runs(budget, version)
    text = (out / "encodings.json").read_text()
    assert json.loads(text)["version"] == version
    path, unknown = apply.apply_encodings(DIGITS, out / "encodings.json", tmp_path)
    assert unknown == ()
    assert path == tmp_path / "model.qdq.onnx"
    images = _digits_images()
    emitted, applied = _outputs(out / "model.qdq.onnx", images), _outputs(path, images)
    assert np.array_equal(emitted, applied)
    assert not np.array_equal(emitted, runtime.session(str(DIGITS)).run(["logits"], {"image": images})[0])


def test_cli_apply_writes_the_same_model(digits_runs, tmp_path):
    out = digits_runs("bops0.3")
    result = CliRunner().invoke(
        main, ["apply", str(DIGITS), "--encodings", str(out / "encodings.json"), "-o", str(tmp_path / "applied")]
    )
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    assert str(tmp_path / "applied" / "model.qdq.onnx") in result.stdout
    images = _digits_images()
    assert np.array_equal(_outputs(tmp_path / "applied" / "model.qdq.onnx", images), _outputs(out / "model.qdq.onnx", images))


def test_apply_puts_the_gemm_axis_back(tmp_path):
    # Gemm with transB=0: weight [8, 4], output channels on axis 1; the file says only "per channel"
    model = builders.gemm_bn(trans_b=False)
    calib = {"x": np.random.default_rng(0).standard_normal((32, 8)).astype(np.float32)}
    result = onnxmp.quantize(model, profile="npu", calib=calib, output_dir=tmp_path / "q", bits="W8A8")
    path, unknown = apply.apply_encodings(model, result.paths["encodings"], tmp_path / "a")
    assert unknown == ()
    applied = onnx.load(str(path))
    axes = [a.i for n in applied.graph.node if n.op_type == "DequantizeLinear" for a in n.attribute if a.name == "axis"]
    assert 1 in axes
    feeds = builders.feeds_for(model, batch=5)
    emitted = runtime.session(str(result.paths["model"])).run(None, feeds)[0]
    assert np.array_equal(runtime.session(str(path)).run(None, feeds)[0], emitted)


def _aimet_style_file(out: Path, tmp_path: Path) -> Path:
    """Our 0.6.1 file plus encodings of tensors the digits model does not have."""
    data = json.loads((out / "encodings.json").read_text())
    data["activation_encodings"]["head/softmax_out"] = data["activation_encodings"]["fc1"]
    data["param_encodings"]["head.weight"] = data["param_encodings"]["fc2.weight"]
    path = tmp_path / "aimet.encodings"
    path.write_text(json.dumps(data))
    return path


def test_unknown_tensors_are_returned_and_the_known_ones_applied(digits_runs, tmp_path):
    out = digits_runs("W8A8", "0.6.1")
    path, unknown = apply.apply_encodings(DIGITS, _aimet_style_file(out, tmp_path), tmp_path / "applied")
    assert unknown == ("head.weight", "head/softmax_out")
    images = _digits_images()
    assert np.array_equal(_outputs(path, images), _outputs(out / "model.qdq.onnx", images))


def test_cli_apply_prints_unknown_tensors_on_stderr(digits_runs, tmp_path):
    out = digits_runs("W8A8", "0.6.1")
    result = CliRunner().invoke(
        main, ["apply", str(DIGITS), "--encodings", str(_aimet_style_file(out, tmp_path)), "-o", str(tmp_path / "applied")]
    )
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines() == [
        "onnxmp: 2 encodings name tensors this model does not have: head.weight, head/softmax_out"
    ]
    assert (tmp_path / "applied" / "model.qdq.onnx").is_file()


def _file_naming_nothing(tmp_path: Path) -> Path:
    path = tmp_path / "other.encodings"
    path.write_text(json.dumps({"version": "1.0.0", "param_encodings": [], "activation_encodings": [{**_V1_ENTRY, "name": "other_input"}]}))
    return path


def test_file_naming_no_tensor_of_the_model_is_an_encodings_error(tmp_path):
    path = _file_naming_nothing(tmp_path)
    with pytest.raises(EncodingsError, match="no tensor named in the file exists in the model"):
        apply.apply_encodings(DIGITS, path, tmp_path / "applied")
    assert not (tmp_path / "applied" / "model.qdq.onnx").exists()


def test_cli_apply_with_a_file_naming_nothing_exits_2_with_one_line(tmp_path):
    result = CliRunner().invoke(
        main, ["apply", str(DIGITS), "--encodings", str(_file_naming_nothing(tmp_path)), "-o", str(tmp_path / "applied")]
    )
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("onnxmp: error: ")
    assert "Traceback" not in result.output


def test_wrong_channel_count_is_an_encodings_error(digits_runs, tmp_path):
    data = json.loads((digits_runs("W8A8") / "encodings.json").read_text())
    for entry in data["param_encodings"]:
        if entry["name"] == "fc2.weight":  # 10 output channels; the file gives 3
            entry["scale"], entry["offset"] = entry["scale"][:3], entry["offset"][:3]
    path = tmp_path / "bad.encodings"
    path.write_text(json.dumps(data))
    with pytest.raises(EncodingsError, match="fc2.weight"):
        apply.apply_encodings(DIGITS, path, tmp_path / "applied")
