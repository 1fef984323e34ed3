"""hw_profile: every built-in YAML loads; every error names the file and the key."""

from __future__ import annotations

import hashlib
import re
from importlib import resources
from pathlib import Path

import pytest

from onnxmp import hw_profile
from onnxmp.errors import ProfileError
from onnxmp.hw_profile import ActivationClipping, WeightRounding
from onnxmp.latency_spec import Dataflow, OrtSpec, SystolicSpec
from onnxmp.records import Candidate, Granularity

OPS = "ops:\n  quantized: [Conv, Add]\n  passthrough: [Relu]\n"


def _write(tmp_path: Path, text: str, name: str = "device.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_builtin_names():
    assert hw_profile.builtin_names() == ("npu", "npu-transformer", "ort-cpu", "research", "systolic-amed", "w4a8-w8a16")


@pytest.mark.parametrize("name", hw_profile.builtin_names())
def test_every_builtin_profile_loads(name):
    profile = hw_profile.load_profile(name)
    text = (resources.files("onnxmp.hw_profiles") / f"{name}.yaml").read_text()
    assert profile.name == name
    assert profile.fingerprint == hashlib.sha256(text.encode()).hexdigest()
    assert profile.kernels
    assert all(k.w_bits is not None for k in profile.kernels)
    costs = [k.cost() for k in profile.kernels]
    assert costs == sorted(costs, reverse=True)
    assert not profile.quantized_ops & profile.passthrough_ops
    assert {"Conv", "Gemm", "MatMul", "Add", "Concat"} <= profile.quantized_ops
    assert profile.weight_granularity is Granularity.PER_CHANNEL
    assert profile.activation_symmetric is False


def test_npu_profile_literal():
    profile = hw_profile.load_profile("npu")
    assert profile.kernels == (Candidate(8, 16), Candidate(8, 8), Candidate(4, 8))
    assert profile.kernels_for("Conv") == profile.kernels


def test_npu_transformer_profile_literal():
    profile = hw_profile.load_profile("npu-transformer")
    assert profile.kernels == (Candidate(8, 16), Candidate(8, 8), Candidate(4, 8))
    a16 = (Candidate(None, 16),)
    assert {op: profile.kernels_for(op) for op in ("LayerNormalization", "Softmax", "Gelu")} == {
        "LayerNormalization": a16, "Softmax": a16, "Gelu": a16,
    }
    assert profile.kernels_for("MatMul") == profile.kernels
    assert {"LayerNormalization", "Softmax", "Gelu"} <= profile.quantized_ops


def test_activation_only_kernel_may_lack_a_weight_kernel(tmp_path):
    # an 8-bit device with a 16-bit softmax: A16 needs no W8A16 kernel
    path = _write(tmp_path, "kernels: [W8A8]\nops: {quantized: [Softmax]}\nop_kernels:\n  Softmax: [A16]\n")
    assert hw_profile.load_profile(path).kernels_for("Softmax") == (Candidate(None, 16),)


def test_research_profile_order():
    # ordered by w_bits * a_bits, ties by larger a_bits: W6A8 before W8A6 (48), W4A6 before W6A4 (24)
    kernels = [str(k) for k in hw_profile.load_profile("research").kernels]
    assert kernels == ["W8A16", "W8A8", "W6A8", "W8A6", "W6A6", "W4A8", "W4A6", "W6A4", "W4A4"]


def test_load_by_path_equals_load_by_name(tmp_path):
    text = (resources.files("onnxmp.hw_profiles") / "npu.yaml").read_text()
    by_path = hw_profile.load_profile(_write(tmp_path, text, "copy.yaml"))
    by_name = hw_profile.load_profile("npu")
    assert by_path.kernels == by_name.kernels
    assert by_path.quantized_ops == by_name.quantized_ops
    assert by_path.fingerprint == by_name.fingerprint


def test_minimal_profile_defaults_and_op_kernels(tmp_path):
    path = _write(
        tmp_path, "kernels: [W4A8, W8A8]\n" + OPS + "op_kernels:\n  Add: [W8A8]\n", "small.yaml"
    )
    profile = hw_profile.load_profile(path)
    assert profile.name == "small"
    assert profile.kernels == (Candidate(8, 8), Candidate(4, 8))
    assert profile.kernels_for("Add") == (Candidate(8, 8),)
    assert profile.kernels_for("Conv") == (Candidate(8, 8), Candidate(4, 8))
    assert profile.quantized_ops == frozenset({"Conv", "Add"})
    assert profile.passthrough_ops == frozenset({"Relu"})
    assert profile.weight_granularity is Granularity.PER_CHANNEL
    assert profile.description == ""


def test_float_among_kernels_lets_groups_stay_float(tmp_path):
    profile = hw_profile.load_profile(_write(tmp_path, "kernels: [W8A8, FLOAT, W8A16]\n" + OPS))
    assert profile.float_groups and profile.kernels == (Candidate(8, 16), Candidate(8, 8))  # float is no kernel
    assert not hw_profile.load_profile(_write(tmp_path, "kernels: [W8A8]\n" + OPS)).float_groups
    ort = hw_profile.load_profile("ort-cpu")
    assert ort.float_groups and ort.kernels == (Candidate(8, 16), Candidate(8, 8))


def test_per_tensor_symmetric_scheme(tmp_path):
    schemes = "schemes:\n  weights: {granularity: per_tensor}\n  activations: {symmetric: true}\n"
    profile = hw_profile.load_profile(_write(tmp_path, "kernels: [W8A8]\n" + OPS + schemes))
    assert profile.weight_granularity is Granularity.PER_TENSOR
    assert profile.activation_symmetric is True


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("kernels: [W8A8, W3A99]\n" + OPS, "kernels[1]: 'W3A99': bit-width 99 outside 2..16"),
        ("kernels: [W8A8, X8]\n" + OPS, "kernels[1]: unknown 'X8' (expected e.g. 'W4A8' or 'float')"),
        ("kernels: [A8]\n" + OPS, "kernels[0]: 'A8' has no weight bits (expected e.g. 'W4A8')"),
        ("kernels: [float, W8A8, flaot]\n" + OPS, "kernels[2]: unknown 'flaot' (expected e.g. 'W4A8' or 'float')"),
        ("kernels: [float, W8A8, Float]\n" + OPS, "kernels[2]: 'float' listed twice"),
        ("kernels: [float]\n" + OPS, "kernels: 'float' alone: list at least one kernel such as W8A8 beside it"),
        ("kernels: [float, W8A8]\n" + OPS + "op_kernels:\n  Conv: [float]\n", "op_kernels.Conv[0]: unknown 'float' (expected e.g. 'W4A8')"),
        ("kernels: [W1A8]\n" + OPS, "kernels[0]: 'W1A8': bit-width 1 outside 2..16"),
        ("kernels: [W8A32]\n" + OPS, "kernels[0]: 'W8A32': bit-width 32 outside 2..16"),
        ("kernels: [W8A8, w8a8]\n" + OPS, "kernels[1]: 'w8a8' listed twice"),
        ("kernels: []\n" + OPS, "kernels: expected a non-empty list such as [W8A8, W4A8]"),
        (OPS, "kernels: missing required key"),
        ("kernels: [W8A8]\n", "ops: missing required key"),
        (
            "kernels: [W8A8]\nops: [Conv]\n",
            "ops: expected a mapping with 'quantized' and 'passthrough'",
        ),
        (
            "kernels: [W8A8]\nops:\n  quantized: Conv\n",
            "ops.quantized: expected a list of ONNX op types",
        ),
        (
            "kernels: [W8A8]\nops:\n  quantized: [Conv, Relu]\n  passthrough: [Relu]\n",
            "ops.passthrough: 'Relu' is also listed as quantized",
        ),
        (
            "kernels: [W8A8]\n" + OPS + "op_kernels:\n  Conv: [W4A4]\n",
            "op_kernels.Conv: W4A4 is not one of the profile's kernels",
        ),
        (
            "kernels: [W8A8]\n" + OPS + "schemes:\n  weights: {granularity: per_row}\n",
            "schemes.weights.granularity: 'per_row' (allowed: per_tensor, per_channel)",
        ),
        (
            "kernels: [W8A8]\n" + OPS + "schemes:\n  activations: {symmetric: 1}\n",
            "schemes.activations.symmetric: expected true or false, got 1",
        ),
        (
            "kernels: [W8A8]\n" + OPS + "schemes:\n  weights: {symmetric: false}\n",
            "schemes.weights.symmetric: false: asymmetric weights are not supported",
        ),
        (
            "kernels: [W8A8]\n" + OPS + "schemes:\n  weights: {symmetric: no}\n",
            "schemes.weights.symmetric: false: asymmetric weights are not supported",
        ),
        ("- W8A8\n- W4A8\n", "expected a mapping at the top level"),
        ("", "expected a mapping at the top level"),
    ],
)
def test_profile_errors_name_file_and_key(tmp_path, text, message):
    path = _write(tmp_path, text)
    with pytest.raises(ProfileError) as info:
        hw_profile.load_profile(path)
    assert str(info.value) == f"{path}: {message}"


def test_unknown_top_level_key(tmp_path):
    path = _write(tmp_path, "kernels: [W8A8]\n" + OPS + "kernals: [W4A8]\n")
    with pytest.raises(ProfileError) as info:
        hw_profile.load_profile(path)
    assert str(info.value) == f"{path}: kernals: unknown key (did you mean 'kernels'?)"


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("schemes:\n  weights: {granulrity: per_tensor}\n", "schemes.weights.granulrity: unknown key (did you mean 'granularity'?)"),
        ("schemes:\n  weights: {symetric: true}\n", "schemes.weights.symetric: unknown key (did you mean 'symmetric'?)"),
        ("schemes:\n  activatons: {symmetric: true}\n", "schemes.activatons: unknown key (did you mean 'activations'?)"),
        ("schemes:\n  bias: {quantise: true}\n", "schemes.bias.quantise: unknown key (did you mean 'quantize'?)"),
        ("schemes:\n  bias: {zzz: true}\n", "schemes.bias.zzz: unknown key (allowed: quantize)"),
        ("schemes:\n  1: {}\n", "schemes.1: unknown key (allowed: activations, bias, embeddings, weights)"),
        ("schemes:\n  activations: {granularity: per_channel}\n",
         "schemes.activations.granularity: 'per_channel' (allowed: per_tensor)"),
        ("schemes: []\n", "schemes: expected a mapping, got list"),
        ("op_kernels:\n  Conb: [W8A8]\n", "op_kernels.'Conb' is not an ONNX op type (did you mean 'Conv'?)"),
        ("null: 1\n", "None: unknown key (allowed: description, kernels, latency, name, op_kernels, ops, schemes)"),
    ],
)
def test_unknown_keys_at_any_depth_name_the_closest_valid_one(tmp_path, section, message):
    path = _write(tmp_path, "kernels: [W8A8]\n" + OPS + section)
    with pytest.raises(ProfileError) as info:
        hw_profile.load_profile(path)
    assert str(info.value) == f"{path}: {message}"


@pytest.mark.parametrize(
    ("ops", "message"),
    [
        ("ops:\n  quantised: [Conv]\n", "ops.quantised: unknown key (did you mean 'quantized'?)"),
        ("ops:\n  quantized: [Conv, Gemn]\n", "ops.quantized[1]: 'Gemn' is not an ONNX op type (did you mean 'Gemm'?)"),
        ("ops:\n  passthrough: [relu]\n", "ops.passthrough[0]: 'relu' is not an ONNX op type (did you mean 'Relu'?)"),
    ],
)
def test_misspelled_op_types_are_refused(tmp_path, ops, message):
    path = _write(tmp_path, "kernels: [W8A8]\n" + ops)
    with pytest.raises(ProfileError) as info:
        hw_profile.load_profile(path)
    assert str(info.value) == f"{path}: {message}"


def test_alias_bomb_is_refused_before_it_is_walked(tmp_path):
    # 9 levels of 10 aliases: 10**9 strings once expanded, 1 kB on disk
    lines = ["a0: &a0 [W8A8, W8A8, W8A8, W8A8, W8A8, W8A8, W8A8, W8A8, W8A8, W8A8]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    path = _write(tmp_path, "description:\n  " + "\n  ".join(lines) + "\nkernels: *a8\n" + OPS)
    assert path.stat().st_size < 1200
    with pytest.raises(ProfileError) as info:
        hw_profile.load_profile(path)
    assert str(info.value) == f"{path}: the YAML expands to more than 100000 nodes (aliases)"


def test_a_profile_that_is_not_utf8_is_a_profile_error(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"name: caf\xe9\nkernels: [W8A8]\n")
    with pytest.raises(ProfileError) as info:
        hw_profile.load_profile(path)
    assert str(info.value) == f"{path}: not a YAML text file (byte 9 is not UTF-8)"


def test_bad_yaml(tmp_path):
    path = _write(tmp_path, "kernels: [W8A8\nops: {\n")
    with pytest.raises(ProfileError) as info:
        hw_profile.load_profile(path)
    assert str(info.value).startswith(f"{path}: not valid YAML: ")
    assert "\n" not in str(info.value)


def test_missing_file(tmp_path):
    path = tmp_path / "absent.yaml"
    with pytest.raises(ProfileError) as info:
        hw_profile.load_profile(path)
    assert str(info.value) == f"{path}: cannot read profile: No such file or directory"


def test_unknown_builtin_name():
    with pytest.raises(ProfileError) as info:
        hw_profile.load_profile("tpu9000")
    assert str(info.value) == (
        "tpu9000: no such profile file or built-in profile (built-in: npu, npu-transformer, ort-cpu, research, systolic-amed, w4a8-w8a16)"
    )


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ("schemes: [per_channel]\n", "schemes"),
        ("schemes:\n  weights: per_channel\n", "schemes.weights"),
        ("op_kernels: [W8A8]\n", "op_kernels"),
    ],
)
def test_section_of_wrong_type_is_a_profile_error(tmp_path, section, key):
    path = _write(tmp_path, "kernels: [W8A8]\n" + OPS + section)
    with pytest.raises(ProfileError, match=f"^{re.escape(str(path))}: {key}: "):
        hw_profile.load_profile(path)


def test_weight_rounding_from_the_profile(tmp_path):
    path = _write(tmp_path, "kernels: [W8A8]\n" + OPS + "schemes:\n  weights: {rounding: adaround}\n")
    assert hw_profile.load_profile(path).weight_rounding is WeightRounding.ADAROUND
    assert hw_profile.load_profile("npu").weight_rounding is WeightRounding.NEAREST
    path = _write(tmp_path, "kernels: [W8A8]\n" + OPS + "schemes:\n  weights: {rounding: up}\n")
    with pytest.raises(ProfileError) as info:
        hw_profile.load_profile(path)
    assert str(info.value) == f"{path}: schemes.weights.rounding: 'up' (allowed: nearest, adaround)"


def test_activation_clipping_from_the_profile(tmp_path):
    path = _write(tmp_path, "kernels: [W8A8]\n" + OPS + "schemes:\n  activations: {clipping: output}\n")
    assert hw_profile.load_profile(path).activation_clipping is ActivationClipping.OUTPUT
    assert hw_profile.load_profile("npu").activation_clipping is ActivationClipping.TENSOR
    path = _write(tmp_path, "kernels: [W8A8]\n" + OPS + "schemes:\n  activations: {clipping: max}\n")
    with pytest.raises(ProfileError) as info:
        hw_profile.load_profile(path)
    assert str(info.value) == f"{path}: schemes.activations.clipping: 'max' (allowed: tensor, output)"


def test_systolic_amed_profile_is_table_1():
    spec = hw_profile.load_profile("systolic-amed").latency
    assert spec == SystolicSpec(32, 32, Dataflow.OUTPUT_STATIONARY, 64.0, 64.0, 64.0, 10.0, 0.2, word_bits=16)


@pytest.mark.parametrize(
    ("latency", "message"),
    [
        ("latency: fast\n", "latency: expected a mapping with 'model: systolic' or 'model: ort'"),
        ("latency: {model: gpu}\n", "latency.model: 'gpu' (allowed: systolic, ort)"),
        ("latency: {model: ort, threads: 0}\n", "latency.threads: expected a positive integer, got 0"),
        ("latency: {model: ort, thread: 2}\n", "latency.thread: unknown key (allowed: provider, runs, threads, warmups)"),
        ("latency: {model: systolic, rows: 4}\n", "latency.bandwidth_words: missing required key for model systolic"),
        (
            "latency: {model: systolic, rows: 4, cols: 4, ifmap_sram_kb: 1, filter_sram_kb: 1, ofmap_sram_kb: 1,"
            " bandwidth_words: 1, clock_ghz: 1, dataflow: rs}\n",
            "latency.dataflow: 'rs' (allowed: os, ws, is)",
        ),
    ],
)
def test_latency_section_errors_name_the_key(tmp_path, latency, message):
    path = _write(tmp_path, "kernels: [W8A8]\n" + OPS + latency)
    with pytest.raises(ProfileError) as info:
        hw_profile.load_profile(path)
    assert str(info.value) == f"{path}: {message}"


def test_ort_latency_section_defaults(tmp_path):
    path = _write(tmp_path, "kernels: [W8A8]\n" + OPS + "latency: {model: ort, threads: 1}\n")
    assert hw_profile.load_profile(path).latency == OrtSpec(threads=1)


def test_embeddings_scheme(tmp_path):
    assert hw_profile.load_profile("npu-transformer").embeddings == hw_profile.WeightOnly(8, Granularity.PER_CHANNEL)
    assert hw_profile.load_profile("npu").embeddings is None
    path = _write(tmp_path, "kernels: [W8A8]\nops: {quantized: [MatMul]}\nschemes:\n  embeddings: {bits: 4, granularity: per_tensor}\n")
    assert hw_profile.load_profile(path).embeddings == hw_profile.WeightOnly(4, Granularity.PER_TENSOR)


@pytest.mark.parametrize(
    ("scheme", "message"),
    [
        ("{bits: 1}", "schemes.embeddings.bits: expected an integer in 2..16, got 1"),
        ("{granularity: per_row}", "schemes.embeddings.bits: expected an integer in 2..16, got None"),
        ("{bits: 8, granularity: per_row}", "schemes.embeddings.granularity: 'per_row' (allowed: per_tensor, per_channel)"),
    ],
)
def test_bad_embeddings_scheme(tmp_path, scheme, message):
    path = _write(tmp_path, f"kernels: [W8A8]\nops: {{quantized: [MatMul]}}\nschemes:\n  embeddings: {scheme}\n")
    with pytest.raises(ProfileError) as info:
        hw_profile.load_profile(path)
    assert str(info.value) == f"{path}: {message}"
