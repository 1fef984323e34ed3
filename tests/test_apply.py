"""`onnxmp apply` checks every field of the file against the schema and the model before it
builds anything: a bad file is one line (exit 2), never a model ORT refuses or a crash."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from onnxmp import apply, runtime
from onnxmp.cli import main
from onnxmp.errors import EncodingsError
from tests import builders

# conv_relu: x[N,3,8,8] ─ conv(w[4,3,3,3], b[4]) ─► c ─ relu ─► y
WEIGHT = {"name": "w", "dtype": "INT", "bw": 8, "is_sym": True, "enc_type": "PER_CHANNEL",
          "scale": [0.01, 0.02, 0.03, 0.04], "offset": [-128] * 4}
BIAS = {"name": "b", "dtype": "INT", "bw": 32, "is_sym": True, "enc_type": "PER_CHANNEL",
        "scale": [1e-4] * 4, "offset": [-(2**31)] * 4}
INPUT = {"name": "x", "dtype": "INT", "bw": 8, "is_sym": False, "enc_type": "PER_TENSOR", "scale": [0.02], "offset": [-128]}
V1 = {"version": "1.0.0", "activation_encodings": [INPUT], "param_encodings": [BIAS, WEIGHT], "excluded_layers": []}
V061 = {
    "version": "0.6.1",
    "activation_encodings": {"x": [{"bitwidth": 8, "dtype": "int", "is_symmetric": "False", "offset": -128, "scale": 0.02}]},
    "param_encodings": {"w": [{"bitwidth": 8, "dtype": "int", "is_symmetric": "True", "offset": -128, "scale": s}
                              for s in (0.01, 0.02, 0.03, 0.04)]},
}


def _file(tmp_path: Path, data: dict | str) -> Path:
    path = tmp_path / "user.encodings"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def _refused(tmp_path: Path, data: dict | str) -> str:
    path = _file(tmp_path, data)
    with pytest.raises(EncodingsError) as info:
        apply.apply_encodings(builders.conv_relu(), path, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing built, nothing written
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    return message[len(f"{path}: "):]


def _with(section: str, index: int, **fields) -> dict:
    data = copy.deepcopy(V1)
    data[section][index].update(fields)
    return data


def test_the_valid_file_builds_a_model_that_runs(tmp_path):
    path, unknown = apply.apply_encodings(builders.conv_relu(), _file(tmp_path, V1), tmp_path / "out")
    assert unknown == ()
    feeds = builders.feeds_for(builders.conv_relu(), batch=3)
    (y,) = runtime.session(str(path)).run(None, feeds)
    assert y.shape == (3, 4, 8, 8) and np.isfinite(y).all()
    kinds = sorted(n.op_type for n in onnx.load(str(path)).graph.node)
    assert kinds == ["Conv", "DequantizeLinear", "DequantizeLinear", "DequantizeLinear", "QuantizeLinear", "Relu"]


@pytest.mark.parametrize(
    ("bw", "message"),
    [
        (0, "bw: 0 bits outside 2..16"),
        (1, "bw: 1 bits outside 2..16"),
        (-8, "bw: -8 bits outside 2..16"),
        (8.5, "bw: 8.5 is not a whole number of bits"),
        ("8", "bw: '8' is not a whole number of bits"),
        (True, "bw: True is not a whole number of bits"),
        (17, "bw: 17 bits outside 2..16"),
        (32, "bw: 32 bits outside 2..16"),
    ],
)
def test_activation_bit_widths_outside_2_to_16_are_refused(tmp_path, bw, message):
    assert _refused(tmp_path, _with("activation_encodings", 0, bw=bw)) == f"activation_encodings: x: {message}"


@pytest.mark.parametrize(("bw", "shown"), [(0, "0"), (1, "1"), (-4, "-4"), (17, "17"), (64, "64")])
def test_weight_bit_widths_outside_2_to_16_or_32_are_refused(tmp_path, bw, shown):
    message = _refused(tmp_path, _with("param_encodings", 1, bw=bw))
    assert message == f"param_encodings: w: bw: {shown} bits outside 2..16, or 32 for biases"


def test_an_integral_float_bit_width_is_a_bit_width(tmp_path):
    path, _ = apply.apply_encodings(builders.conv_relu(), _file(tmp_path, _with("activation_encodings", 0, bw=8.0)), tmp_path / "o")
    integral, _ = apply.apply_encodings(builders.conv_relu(), _file(tmp_path, _with("activation_encodings", 0, bw=8)), tmp_path / "i")
    assert path.read_bytes() == integral.read_bytes()


@pytest.mark.parametrize(
    ("scale", "shown"),
    [("Infinity", "inf"), ("-Infinity", "-inf"), ("NaN", "nan"), ("0", "0"), ("-0.5", "-0.5"), ("1e39", "1e+39"),
     ("1e-46", "1e-46"), ('"0.1"', "'0.1'"), ("null", "None")],
)
def test_scales_that_are_not_finite_positive_float32_are_refused(tmp_path, scale, shown):
    text = json.dumps(V1).replace('"scale": [0.02]', f'"scale": [{scale}]')
    assert f'"scale": [{scale}]' in text
    message = _refused(tmp_path, text)
    assert message == f"activation_encodings: x: scale[0]: {shown} is not a finite positive float32"


@pytest.mark.parametrize(
    ("offset", "message"),
    [
        (1, "offset[0]: 1 outside the 8-bit grid's -255..0"),
        (-256, "offset[0]: -256 outside the 8-bit grid's -255..0"),
        (-1e30, "offset[0]: -1000000000000000019884624838656 outside the 8-bit grid's -255..0"),
        (10**40, "offset[0]: " + "1" + "0" * 36 + "... outside the 8-bit grid's -255..0"),  # 40 characters shown
        (-3.5, "offset[0]: -3.5 is not an integer"),
    ],
)
def test_offsets_off_the_grid_are_refused(tmp_path, offset, message):
    assert _refused(tmp_path, _with("activation_encodings", 0, offset=[offset])) == f"activation_encodings: x: {message}"


def test_two_entries_for_one_tensor_with_different_values_are_refused(tmp_path):
    data = copy.deepcopy(V1)
    data["activation_encodings"].append({**INPUT, "scale": [0.03]})
    assert _refused(tmp_path, data) == "activation_encodings: x: two entries with different values"


def test_two_identical_entries_for_one_tensor_are_one(tmp_path):
    data = copy.deepcopy(V1)
    data["activation_encodings"].append(copy.deepcopy(INPUT))
    path, unknown = apply.apply_encodings(builders.conv_relu(), _file(tmp_path, data), tmp_path / "o")
    single, _ = apply.apply_encodings(builders.conv_relu(), _file(tmp_path, V1), tmp_path / "s")
    assert path.read_bytes() == single.read_bytes() and list(unknown) == []


def test_a_0_6_1_tensor_named_twice_with_different_values_is_refused(tmp_path):
    text = json.dumps(V061).replace('"activation_encodings": {"x": [', '"activation_encodings": {"x": [], "x": [', 1)
    assert _refused(tmp_path, text) == "'x' appears twice in one object, with different values"


def test_a_0_6_1_entry_that_is_a_dict_is_refused(tmp_path):
    data = copy.deepcopy(V061)
    data["activation_encodings"]["x"] = data["activation_encodings"]["x"][0]
    assert _refused(tmp_path, data) == "activation_encodings: x: expected a list of per-channel encodings, got a mapping"


def test_0_6_1_channels_must_agree_on_the_bit_width(tmp_path):
    data = copy.deepcopy(V061)
    data["param_encodings"]["w"][2]["bitwidth"] = 4
    assert _refused(tmp_path, data) == "param_encodings: w: bitwidth: channels disagree (8 and 4)"


def test_the_valid_0_6_1_file_builds(tmp_path):
    path, unknown = apply.apply_encodings(builders.conv_relu(), _file(tmp_path, V061), tmp_path / "out")
    assert unknown == () and path.is_file()


@pytest.mark.parametrize(
    ("section", "index", "fields", "message"),
    [
        ("param_encodings", 1, {"bww": 8}, "param_encodings: w: bww: unknown key (did you mean 'bw'?)"),
        ("param_encodings", 1, {"is_sym": "true"}, "param_encodings: w: is_sym: expected true or false, got 'true'"),
        ("param_encodings", 1, {"enc_type": "PER_BLOCK"}, "param_encodings: w: enc_type: 'PER_BLOCK' is not supported (PER_TENSOR or PER_CHANNEL)"),
        ("activation_encodings", 0, {"scale": [0.1, 0.2], "offset": [0, 0]}, "activation_encodings: x: scale: PER_TENSOR takes one scale, got 2"),
        ("activation_encodings", 0, {"scale": 0.1}, "activation_encodings: x: scale: expected a list, got float"),
        ("activation_encodings", 0, {"name": ""}, "activation_encodings: [0]: name: expected a tensor name, got ''"),
    ],
)
def test_schema_errors_name_section_tensor_and_field(tmp_path, section, index, fields, message):
    assert _refused(tmp_path, _with(section, index, **fields)) == message


def test_a_tensor_in_both_sections_is_refused(tmp_path):
    data = copy.deepcopy(V1)
    data["activation_encodings"].append({**WEIGHT, "enc_type": "PER_TENSOR", "scale": [0.1], "offset": [-128]})
    assert _refused(tmp_path, data) == "'w' is in both param_encodings and activation_encodings"


def test_an_unknown_top_level_key_names_the_closest_one(tmp_path):
    assert _refused(tmp_path, {**V1, "param_encoding": []}) == "param_encoding: unknown key (did you mean 'param_encodings'?)"


# --- against the model ---------------------------------------------------------------------


def test_an_asymmetric_weight_encoding_is_refused(tmp_path):
    message = _refused(tmp_path, _with("param_encodings", 1, is_sym=False, offset=[-100] * 4))
    assert message == "w: weights and biases take signed symmetric encodings (is_sym true, offset -128); this one has offset -100"


def test_a_per_channel_weight_with_the_wrong_channel_count_is_refused(tmp_path):
    message = _refused(tmp_path, _with("param_encodings", 1, scale=[0.1] * 3, offset=[-128] * 3))
    assert message == "w: 3 scales, the tensor has 4 channels"


def test_a_param_encoding_for_a_computed_tensor_is_refused(tmp_path):
    message = _refused(tmp_path, _with("param_encodings", 1, name="c"))
    assert message == "c: in param_encodings, but the model computes this tensor (not a weight)"


def test_an_activation_encoding_for_a_weight_is_refused(tmp_path):
    data = copy.deepcopy(V1)
    data["param_encodings"] = [BIAS]
    data["activation_encodings"][0]["name"] = "w"
    assert _refused(tmp_path, data) == "w: in activation_encodings, but the tensor is a weight (a constant)"


def test_a_per_channel_activation_is_refused(tmp_path):
    message = _refused(tmp_path, _with("activation_encodings", 0, enc_type="PER_CHANNEL", scale=[0.1] * 2, offset=[0] * 2))
    assert message == "x: per-channel activation encodings are not supported (one scale per tensor)"


def test_an_encoding_for_an_integer_tensor_is_refused(tmp_path):
    #   x[N,4] ─ shape(Shape) ─► s[2] (int64) ─ cast ─► f[2] ;  x ─ relu ─► y
    model = onnx.parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[N,4] x) => (float[N,4] y, float[2] f) {
            [shape] s = Shape (x)
            [cast] f = Cast <to = 1> (s)
            [relu] y = Relu (x)
        }""")
    data = {"version": "1.0.0", "activation_encodings": [INPUT, {**INPUT, "name": "s"}], "param_encodings": []}
    path = _file(tmp_path, data)
    with pytest.raises(EncodingsError) as info:
        apply.apply_encodings(model, path, tmp_path / "out")
    assert str(info.value) == f"{path}: s: the tensor is int64; onnxmp quantizes float32 tensors"


def test_cli_refuses_a_bad_file_with_one_line_and_exit_2(tmp_path):
    model = tmp_path / "conv_relu.onnx"
    onnx.save(builders.conv_relu(), str(model))
    path = _file(tmp_path, _with("activation_encodings", 0, bw=0))
    result = CliRunner().invoke(main, ["apply", str(model), "--encodings", str(path), "-o", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines() == [f"onnxmp: error: {path}: activation_encodings: x: bw: 0 bits outside 2..16"]
    assert not (tmp_path / "out").exists()


def test_a_file_that_is_not_utf8_is_an_encodings_error(tmp_path):
    path = tmp_path / "user.encodings"
    data = b'{"version": "1.0.0", "param_encodings": [], "activation_encodings": [\xff]}'
    path.write_bytes(data)
    with pytest.raises(EncodingsError) as info:
        apply.apply_encodings(builders.conv_relu(), path, tmp_path / "out")
    assert str(info.value) == f"{path}: not a JSON text file (byte {data.index(0xFF)} is not UTF-8)"
