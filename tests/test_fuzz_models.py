"""Fuzz/property suite (issue 9): whatever model a user brings, onnxmp runs it or refuses clearly.

Each case runs `onnxmp quantize` (in process, local executor) on a random model of
`tests/random_models.py` (random DAG, symbolic / batch-1 / static batch) or on the bytes of
one with random bytes changed, and must either
- exit 0 with a QDQ model ONNX Runtime loads and runs, whose output SQNR against the float
  model on the calibration data is finite (or +inf when nothing was quantized), or
- exit 2 with exactly one stderr line "onnxmp: error: ...";
never exit 3, never a traceback, never a hang (each case under `CASE_TIMEOUT_S`).
The default suite runs `DEFAULT_CASES` cases of each kind (about 20 s on 2 busy cores;
ONNXMP_FUZZ_CASES=N changes it); `-m slow` runs `SLOW_CASES` more of each.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from onnxmp.cli import main
from tests import oracles, random_models

CASE_TIMEOUT_S = 60
DEFAULT_CASES = int(os.environ.get("ONNXMP_FUZZ_CASES", "20"))
SLOW_CASES = 200
SAMPLES = 5  # not a multiple of the static batch 2: the last sample is dropped there
BUDGETS = (("--bits", "W8A8"), ("--target-bops", "0.3"), ("--bits", "W4A8"))
_FUZZ = {"deadline": None, "derandomize": True, "suppress_health_check": list(HealthCheck), "database": None}


class CaseTimeoutError(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: int):
    """Raise CaseTimeoutError in this thread after `seconds` (a hang fails the case, not the suite)."""

    def expire(signum, frame):
        raise CaseTimeoutError(f"case did not finish in {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def run_case(model_bytes: bytes, calib: np.ndarray, budget: tuple[str, str], folder: Path) -> int:
    """Quantize and check the outcome contract; returns the exit code (0 or 2)."""
    folder.mkdir(parents=True, exist_ok=True)
    model_path, calib_path, out = folder / "m.onnx", folder / "c.npz", folder / "out"
    model_path.write_bytes(model_bytes)
    np.savez(calib_path, x=calib)
    args = ["quantize", str(model_path), "--profile", "npu", "--calib", str(calib_path), "-o", str(out),
            "--executor", "local", *budget]
    with time_limit(CASE_TIMEOUT_S):
        result = CliRunner().invoke(main, args)
    assert "Traceback" not in result.output, result.output
    assert result.exit_code in (0, 2), (result.exit_code, result.output)
    if result.exit_code == 2:
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("onnxmp: error: "), lines
        return 2
    _assert_finite_sqnr(model_path, out / "model.qdq.onnx", calib)
    return 0


def _assert_finite_sqnr(float_path: Path, qdq_path: Path, calib: np.ndarray) -> None:
    """SQNR over the outputs (mean noise-to-signal ratio, as onnxmp combines them) is not
    NaN or -inf; +inf only when no output changed (nothing quantized, or an output that
    is the model input itself)."""
    original, qdq = onnx.load(float_path), onnx.load(qdq_path)
    batch = original.graph.input[0].type.tensor_type.shape.dim[0]
    feeds = {"x": calib[: batch.dim_value if batch.HasField("dim_value") else len(calib)]}
    want, got = oracles.run(original, feeds), oracles.run(qdq, feeds)
    ratios = []
    for name, expected in want.items():
        ref = expected.astype(np.float64)
        noise, signal = float(np.sum((ref - got[name]) ** 2)), float(np.sum(ref**2))
        assert math.isfinite(noise), name
        ratios.append(0.0 if noise == 0 else noise / signal if signal > 0 else math.inf)
    ratio = float(np.mean(ratios))
    sqnr = math.inf if ratio == 0 else -10 * math.log10(ratio)
    assert math.isfinite(sqnr) or sqnr == math.inf, sqnr


def _mutated(data: bytes, positions: list[int], values: list[int], cut: int | None) -> bytes:
    raw = bytearray(data)
    for position, value in zip(positions, values, strict=False):
        raw[position % len(raw)] = value
    return bytes(raw[:cut] if cut else raw)


def _random_model_case(spec, budget_index, tmp_path_factory) -> int:
    model = random_models.build(spec)
    calib = random_models.calibration(spec, SAMPLES)
    return run_case(model.SerializeToString(), calib, BUDGETS[budget_index], tmp_path_factory.mktemp("fuzz"))


def _mutated_case(spec, mutation, tmp_path_factory) -> int:
    positions, values, cut = mutation
    data = _mutated(random_models.build(spec).SerializeToString(), positions, values, cut)
    calib = random_models.calibration(spec, SAMPLES)
    return run_case(data, calib, BUDGETS[0], tmp_path_factory.mktemp("mutated"))


MUTATIONS = st.tuples(
    st.lists(st.integers(0, 10**6), min_size=1, max_size=4),
    st.lists(st.integers(0, 255), min_size=1, max_size=4),
    st.one_of(st.none(), st.integers(1, 4000)),
)


@settings(max_examples=DEFAULT_CASES, **_FUZZ)
@given(spec=random_models.random_models(), budget_index=st.integers(0, len(BUDGETS) - 1))
def test_random_models_quantize(spec, budget_index, tmp_path_factory):
    # every generated model is valid and every op is known: refusing one would be a bug
    assert _random_model_case(spec, budget_index, tmp_path_factory) == 0


@settings(max_examples=DEFAULT_CASES, **_FUZZ)
@given(spec=random_models.random_models(), mutation=MUTATIONS)
def test_mutated_model_bytes_run_or_are_refused_in_one_line(spec, mutation, tmp_path_factory):
    _mutated_case(spec, mutation, tmp_path_factory)


@pytest.mark.slow
@settings(max_examples=SLOW_CASES, **_FUZZ)
@given(spec=random_models.random_models(), budget_index=st.integers(0, len(BUDGETS) - 1))
def test_many_random_models(spec, budget_index, tmp_path_factory):
    assert _random_model_case(spec, budget_index, tmp_path_factory) == 0


@pytest.mark.slow
@settings(max_examples=SLOW_CASES, **_FUZZ)
@given(spec=random_models.random_models(), mutation=MUTATIONS)
def test_many_mutated_models(spec, mutation, tmp_path_factory):
    _mutated_case(spec, mutation, tmp_path_factory)


def test_the_generator_draws_what_the_suite_claims():
    # a hand-picked spec: conv3x3 on x, softmax (float) on it, add of both, static batch 2
    spec = random_models.RandomModel(
        image=True, batch=2, channels=2,
        layers=(random_models.Layer("conv3x3", 0, 0), random_models.Layer("softmax", 1, 1), random_models.Layer("add", 1, 2)),
        extra_output=1, seed=0,
    )
    model = random_models.build(spec)
    onnx.checker.check_model(model)
    assert [n.op_type for n in model.graph.node] == ["Conv", "Softmax", "Add"]
    assert [o.name for o in model.graph.output] == ["t3", "t1"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 2
