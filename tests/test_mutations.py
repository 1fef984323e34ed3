"""Mutated profiles, encodings files and phase-1 store lines: each either works or is refused
with one line (an OnnxmpError, exit 2 in the CLI), never another exception (exit 3, a
traceback). Hypothesis draws the mutations, derandomized so CI runs the same cases every
time: structural edits (a value replaced by any JSON/YAML value, a key deleted, misspelled
or added, a list cut) and byte edits (cut, flipped, inserted bytes).
"""

from __future__ import annotations

import copy
import json
import math
from importlib import resources

import numpy as np
import onnx
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from onnxmp import apply, encodings, hw_profile, runtime
from onnxmp.errors import OnnxmpError
from onnxmp.passes import CANONICALIZE
from onnxmp.passes.insert_qdq import WeightStorage, insert_quantizers
from onnxmp.phase1.jobs import Phase1Result
from onnxmp.steps import run_passes
from onnxmp.store import ResultStore
from tests import builders

CASES = {"profiles": 150, "profile bytes": 100, "encodings": 120, "encodings bytes": 60, "store lines": 200}
SETTINGS = {"deadline": None, "derandomize": True, "suppress_health_check": [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]}

SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.sampled_from([0, 1, -1, 2, 8, 16, 17, 32, 255, -128]),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from(["W8A8", "W4A8", "A8", "per_channel", "per_tensor", "True", "False", "INT", "PER_CHANNEL", "Conv"]),
)
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)


def _paths(value, prefix=()):
    """Every path into nested dicts and lists, the root included."""
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _paths(item, (*prefix, i))


def _typo(data: st.DataObject, key: str) -> str:
    if not key:
        return "x"
    i = data.draw(st.integers(0, len(key) - 1))
    return data.draw(st.sampled_from([key[:i] + key[i + 1:], key[:i] + key[i] * 2 + key[i + 1:], key.upper(), key + "s"])) or "x"


def mutate(data: st.DataObject, document):
    """`document` with one to three structural edits at drawn places."""
    document = copy.deepcopy(document)
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(list(_paths(document))))
        if not path:
            document = data.draw(VALUES) if data.draw(st.integers(0, 9)) == 0 else document
            continue
        parent = document
        for step in path[:-1]:
            parent = parent[step]
        last = path[-1]
        edit = data.draw(st.sampled_from(["replace", "delete", "rename", "add", "cut"]))
        if edit == "replace":
            parent[last] = data.draw(VALUES)
        elif edit == "delete":
            del parent[last]
        elif edit == "rename" and isinstance(parent, dict):
            parent[_typo(data, last)] = parent.pop(last)
        elif edit == "add" and isinstance(parent, dict):
            parent[data.draw(st.text(max_size=10))] = data.draw(VALUES)
        elif edit == "cut" and isinstance(parent[last], list):
            parent[last] = parent[last][: data.draw(st.integers(0, len(parent[last])))]
    return document


def mutate_bytes(data: st.DataObject, blob: bytes) -> bytes:
    blob = bytearray(blob)
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(blob)))
        edit = data.draw(st.sampled_from(["cut", "flip", "insert", "truncate"]))
        if edit == "cut":
            del blob[at : at + data.draw(st.integers(1, 16))]
        elif edit == "flip" and at < len(blob):
            blob[at] = data.draw(st.integers(0, 255))
        elif edit == "insert":
            blob[at:at] = data.draw(st.binary(min_size=1, max_size=8))
        else:
            del blob[at:]
    return bytes(blob)


def _works_or_one_line(action):
    """Run `action`; an OnnxmpError must be one printable line."""
    try:
        return action()
    except OnnxmpError as e:
        message = str(e)
        assert message and "\n" not in message and message.isprintable(), repr(message)
        return None


# ---------------------------------------------------------------- profiles

NPU_TEXT = (resources.files("onnxmp.hw_profiles") / "npu.yaml").read_text()
NPU = yaml.safe_load(NPU_TEXT)


@settings(max_examples=CASES["profiles"], **SETTINGS)
@given(data=st.data())
def test_mutated_profiles_load_or_are_one_line_errors(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("profile") / "device.yaml"
    path.write_text(yaml.safe_dump(mutate(data, NPU), allow_unicode=True))
    profile = _works_or_one_line(lambda: hw_profile.load_profile(path))
    if profile is not None:
        assert profile.kernels and all(2 <= b <= 16 for k in profile.kernels for b in (k.w_bits, k.a_bits))


@settings(max_examples=CASES["profile bytes"], **SETTINGS)
@given(data=st.data())
def test_profiles_with_damaged_bytes_load_or_are_one_line_errors(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("profile") / "device.yaml"
    path.write_bytes(mutate_bytes(data, NPU_TEXT.encode()))
    _works_or_one_line(lambda: hw_profile.load_profile(path))


# ---------------------------------------------------------------- encodings


@pytest.fixture(scope="module")
def conv_relu_canonical():
    original = builders.conv_relu()
    canonical = run_passes(original, CANONICALIZE)
    names = {user: canon for canon, user in encodings.original_names(original, canonical).items()}
    return canonical, names


VALID_V1 = {
    "version": "1.0.0",
    "activation_encodings": [{"name": "x", "dtype": "INT", "bw": 8, "is_sym": False, "enc_type": "PER_TENSOR", "scale": [0.02], "offset": [-128]}],
    "param_encodings": [
        {"name": "w", "dtype": "INT", "bw": 8, "is_sym": True, "enc_type": "PER_CHANNEL", "scale": [0.01, 0.02, 0.03, 0.04], "offset": [-128] * 4},
        {"name": "b", "dtype": "INT", "bw": 32, "is_sym": True, "enc_type": "PER_CHANNEL", "scale": [1e-4] * 4, "offset": [-(2**31)] * 4},
    ],
}
VALID_V061 = {
    "version": "0.6.1",
    "activation_encodings": {"x": [{"bitwidth": 8, "dtype": "int", "is_symmetric": "False", "offset": -128, "scale": 0.02}]},
    "param_encodings": {"w": [{"bitwidth": 4, "dtype": "int", "is_symmetric": "True", "offset": -8, "scale": s} for s in (0.1, 0.2, 0.3, 0.4)]},
}


def _build(loaded: encodings.EncodingSet, canonical: onnx.ModelProto, names: dict) -> None:
    """What `apply` does with a file it read, up to a session on the built model."""
    quantizers = apply.fit(loaded, canonical, names, "user.encodings")
    qdq = insert_quantizers(canonical, quantizers, weights=WeightStorage.INTEGER)
    sess = runtime.session(qdq)  # onnxmp built it: ORT must load it (or it is our bug, exit 3)
    (y,) = sess.run(None, builders.feeds_for(canonical, batch=2))
    assert y.shape == (2, 4, 8, 8) and np.isfinite(y).all()


@settings(max_examples=CASES["encodings"], **SETTINGS)
@given(data=st.data(), base=st.sampled_from([VALID_V1, VALID_V061]))
def test_mutated_encodings_build_a_loadable_model_or_are_one_line_errors(conv_relu_canonical, data, base):
    canonical, names = conv_relu_canonical
    text = json.dumps(mutate(data, base))
    _works_or_one_line(lambda: _build(encodings.from_json(text, where="user.encodings"), canonical, names))


@settings(max_examples=CASES["encodings bytes"], **SETTINGS)
@given(data=st.data())
def test_encodings_with_damaged_bytes_build_or_are_one_line_errors(conv_relu_canonical, data, tmp_path_factory):
    canonical, names = conv_relu_canonical
    path = tmp_path_factory.mktemp("enc") / "user.encodings"
    path.write_bytes(mutate_bytes(data, json.dumps(VALID_V1).encode()))
    _works_or_one_line(lambda: _build(apply.read(path), canonical, names))


def test_the_unmutated_encodings_build(conv_relu_canonical):
    for valid in (VALID_V1, VALID_V061):
        _build(encodings.from_json(json.dumps(valid)), *conv_relu_canonical)


# ---------------------------------------------------------------- store lines

ENTRY = {"key": "k", "kind": "phase1", "group": "conv1", "candidate": "W4A8", "signal": [2.5, 1.0], "noise": [0.5, 0.0], "seconds": 0.1}


@settings(max_examples=CASES["store lines"], **SETTINGS)
@given(data=st.data())
def test_mutated_store_lines_are_results_or_skipped(tmp_path_factory, data):
    line = json.dumps(mutate(data, ENTRY)).encode()
    if data.draw(st.booleans()):
        line = mutate_bytes(data, line)
    path = tmp_path_factory.mktemp("store") / "phase1.jsonl"
    path.write_bytes(json.dumps(ENTRY).encode() + b"\n" + line + b"\n")
    store = ResultStore(path, "k")
    results = [Phase1Result.from_entry(e) for e in store.entries("phase1")]
    assert results[0] is not None and results[0].group == "conv1"
    for result in results[1:]:
        if result is not None:  # a usable result: finite, non-negative sums
            assert all(math.isfinite(s) and s >= 0 for s in result.noise.signal)
            assert all(n >= 0 for n in result.noise.noise)
    store.append("phase1", {"group": "g", "candidate": "W8A8", "signal": [1.0], "noise": [0.0]})
    assert list(store.entries("phase1"))[-1]["group"] == "g"  # a damaged last line never swallows the next

