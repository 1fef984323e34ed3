"""Phase 1: SQNR by hand, batch-size independence, suffix == whole model, outputs, resume.

The hand-checked models use dyadic numbers (k / 2^m) for inputs, weights and scales, so
every float32 product and sum ONNX Runtime computes is exact and the SQNR written out in
numpy here must agree to ~1e-12 dB, not just "roughly".
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxmp import hw_profile, model_io, run_store, steps
from onnxmp.calib_data import CalibrationSet, load_arrays
from onnxmp.passes.calibrate import calibrate
from onnxmp.passes.insert_qdq import WeightStorage, insert_qdq
from onnxmp.passes.quantizer_groups import quantizer_groups
from onnxmp.phase1.measure import measure, reference_outputs
from onnxmp.phase1.sensitivity import STORE_KIND, context_for, sensitivity
from onnxmp.records import Candidate, Grid, Plan, TensorEncoding
from onnxmp.store import ResultStore
from tests import builders
from tests.processes import default_sigint

REPO = Path(__file__).resolve().parents[2]
DIGITS = REPO / "models" / "digits_cnn.onnx"
DIGITS_CALIB = REPO / "models" / "digits_calib.npz"
W8A16, W8A8, W4A8 = Candidate(8, 16), Candidate(8, 8), Candidate(4, 8)


# ---------------------------------------------------------------- hand-checked tiny models


def _one_gemm(w: np.ndarray, b: np.ndarray) -> onnx.ModelProto:
    #   x[N,2] ─ fc(w[2,2], b[2], transB=1) ─► y[N,2]
    return builders._model(
        """
        g (float[N,2] x) => (float[N,2] y) {
            [fc] y = Gemm <transB = 1> (x, w, b)
        }""",
        {"w": w.astype(np.float32), "b": b.astype(np.float32)},
    )


def _two_gemms_one_input(wa: np.ndarray, wb: np.ndarray) -> onnx.ModelProto:
    #          ┌─ fa(wa[2,2], transB=1) ─► ya[N,2]
    #   x[N,2] ┤                                    (both Gemms read x: one group, two outputs)
    #          └─ fb(wb[2,2], transB=1) ─► yb[N,2]
    return builders._model(
        """
        g (float[N,2] x) => (float[N,2] ya, float[N,2] yb) {
            [fa] ya = Gemm <transB = 1> (x, wa)
            [fb] yb = Gemm <transB = 1> (x, wb)
        }""",
        {"wa": wa.astype(np.float32), "wb": wb.astype(np.float32)},
    )


def _two_gemms_two_inputs(wa: np.ndarray, wb: np.ndarray) -> onnx.ModelProto:
    #   x1[N,2] ─ fa(wa, transB=1) ─► ya[N,2]
    #   x2[N,2] ─ fb(wb, transB=1) ─► yb[N,2]      (two groups, each touches one output)
    return builders._model(
        """
        g (float[N,2] x1, float[N,2] x2) => (float[N,2] ya, float[N,2] yb) {
            [fa] ya = Gemm <transB = 1> (x1, wa)
            [fb] yb = Gemm <transB = 1> (x2, wb)
        }""",
        {"wa": wa.astype(np.float32), "wb": wb.astype(np.float32)},
    )


# weights k/256 with odd k: w/scale never lands on a .5 tie for the scales below
W = np.array([[83, -181], [291, 67]], np.float64) / 256
W2 = np.array([[-37, 149], [203, -11]], np.float64) / 256
B = np.array([0.125, -0.25])
# inputs k/128 with odd k (no ties at scale 1/32), plus -2.75, below the A8 range (clipped)
X = np.array(
    [[1, -3], [45, 101], [-77, 13], [-255, 127], [301, -5], [17, 211], [-351, 65], [-352, 9],
     [95, -191], [3, 383]],
    np.float64,
) / 128


def _weight_encoding(name: str, bits: int, scales: tuple[float, ...]) -> TensorEncoding:
    return TensorEncoding(name, bits, scales, (0,) * len(scales), grid=Grid.SYMMETRIC_SIGNED, axis=0)


def _act_encoding(name: str, bits: int, scale: float, zero_point: int) -> TensorEncoding:
    return TensorEncoding(name, bits, (scale,), (zero_point,), grid=Grid.ASYMMETRIC_UNSIGNED)


def _hand_encodings(weights: tuple[str, ...], activations: tuple[str, ...]) -> dict:
    """W8: per-channel scales (1/64, 1/32); W4: (1/8, 1/4); A8: 1/32, zp 80; A16: 1/1024, zp 32768."""
    encodings = {}
    for w in weights:
        encodings[(w, 8)] = _weight_encoding(w, 8, (1 / 64, 1 / 32))
        encodings[(w, 4)] = _weight_encoding(w, 4, (1 / 8, 1 / 4))
    for a in activations:
        encodings[(a, 8)] = _act_encoding(a, 8, 1 / 32, 80)
        encodings[(a, 16)] = _act_encoding(a, 16, 1 / 1024, 32768)
    return encodings


def fake_quant(v: np.ndarray, scale, zero_point: int, qmin: int, qmax: int) -> np.ndarray:
    """scale * (clip(round_half_even(v / scale) + zp, qmin, qmax) - zp), written out."""
    q = np.clip(np.round(np.asarray(v, np.float64) / scale) + zero_point, qmin, qmax)
    return (q - zero_point) * scale


def hand_weight(w: np.ndarray, w_bits: int) -> np.ndarray:
    scales = {8: np.array([1 / 64, 1 / 32]), 4: np.array([1 / 8, 1 / 4])}[w_bits][:, None]
    qmax = 2 ** (w_bits - 1) - 1
    return fake_quant(w, scales, 0, -qmax, qmax)


def hand_act(x: np.ndarray, a_bits: int) -> np.ndarray:
    scale, zero_point = {8: (1 / 32, 80), 16: (1 / 1024, 32768)}[a_bits]
    return fake_quant(x, scale, zero_point, 0, 2**a_bits - 1)


def hand_sqnr(ref: np.ndarray, quantized: np.ndarray) -> float:
    return 10 * math.log10(float(np.sum(ref**2)) / float(np.sum((ref - quantized) ** 2)))


def _table(model: onnx.ModelProto, encodings, feeds, store_path: Path, *, batch_size: int = 32, progress=None):
    canon = builders.canonical(model)
    analysis = quantizer_groups(canon.graph, hw_profile.load_profile("npu"))
    calib = CalibrationSet({k: np.asarray(v, np.float32) for k, v in feeds.items()})
    store = ResultStore(store_path, "test-key")
    context = context_for(canon.model, analysis, encodings, calib, batch_size=batch_size)
    table = sensitivity(context, store=store, progress=progress)
    return analysis, table


def _check_hand_values() -> None:
    """The premise of the exact comparisons: every value is a small dyadic number."""
    for values in (W, W2, B, X, hand_weight(W2, 4), hand_weight(W, 8), hand_weight(W, 4), hand_act(X, 8), hand_act(X, 16)):
        assert np.array_equal(values.astype(np.float32).astype(np.float64), values)
    # the grids do something: A16 is exact on these inputs, A8 rounds and clips -2.75 to -2.5
    assert np.array_equal(hand_act(X, 16), X)
    assert hand_act(X, 8)[7, 0] == -2.5
    assert hand_weight(W, 8).tolist() == [[21 / 64, -45 / 64], [36 / 32, 8 / 32]]
    assert hand_weight(W, 4).tolist() == [[3 / 8, -6 / 8], [5 / 4, 1 / 4]]


@pytest.mark.parametrize("candidate", [W8A16, W8A8, W4A8])
def test_one_gemm_sqnr_equals_hand_computation(tmp_path, candidate):
    analysis, table = _table(_one_gemm(W, B), _hand_encodings(("w",), ("x",)), {"x": X}, tmp_path / "s.jsonl")
    assert [(g.id, g.weights, g.activations, g.candidates) for g in analysis.groups] == [
        ("fc", ("w",), ("x",), (W8A16, W8A8, W4A8))
    ]
    _check_hand_values()
    ref = X @ W.T + B
    quantized = hand_act(X, candidate.a_bits) @ hand_weight(W, candidate.w_bits).T + B
    expected = hand_sqnr(ref, quantized)
    assert math.isfinite(expected)
    assert table.of("fc", candidate) == pytest.approx(expected, abs=1e-9)


def test_one_gemm_hand_values_are_ordered_by_precision(tmp_path):
    # a check on the hand numbers themselves: fewer bits, more noise
    _, table = _table(_one_gemm(W, B), _hand_encodings(("w",), ("x",)), {"x": X}, tmp_path / "s.jsonl")
    assert table.of("fc", W8A16) > table.of("fc", W8A8) > table.of("fc", W4A8)


def test_sqnr_does_not_depend_on_batch_size(tmp_path):
    encodings = _hand_encodings(("w",), ("x",))
    tables = {
        bs: _table(_one_gemm(W, B), encodings, {"x": X}, tmp_path / f"s{bs}.jsonl", batch_size=bs)[1]
        for bs in (1, 3, 64)
    }
    for candidate in (W8A16, W8A8, W4A8):
        values = [tables[bs].of("fc", candidate) for bs in (1, 3, 64)]
        assert max(values) - min(values) <= 1e-9, values


def test_zero_noise_gives_plus_inf(tmp_path):
    # weights on the W8 grid (k/64 and k/32) and inputs on the A16 grid: W8A16 changes nothing
    w_exact = np.array([[32, -16], [40, 8]], np.float64) / 64
    store_path = tmp_path / "s.jsonl"
    _, table = _table(_one_gemm(w_exact, B), _hand_encodings(("w",), ("x",)), {"x": X}, store_path)
    assert table.of("fc", W8A16) == math.inf
    assert math.isfinite(table.of("fc", W8A8))  # A8 rounds and clips the inputs
    stored = {e["candidate"]: e for e in ResultStore(store_path, "test-key").entries(STORE_KIND)}
    assert stored["W8A16"]["noise"] == [0.0]
    assert stored["W8A16"]["signal"][0] == pytest.approx(float(np.sum((X @ w_exact.T + B) ** 2)), rel=1e-12)


def test_two_outputs_combine_by_mean_noise_to_signal(tmp_path):
    # ya and yb see the same group; yb is ~16x larger, so pooling the sums would weigh it ~256x
    wa, wb = W, W2 * 16
    encodings = _hand_encodings(("wa", "wb"), ("x",))
    encodings[("wb", 8)] = _weight_encoding("wb", 8, (16 / 64, 16 / 32))
    encodings[("wb", 4)] = _weight_encoding("wb", 4, (16 / 8, 16 / 4))
    analysis, table = _table(_two_gemms_one_input(wa, wb), encodings, {"x": X}, tmp_path / "s.jsonl")
    assert [(g.id, g.weights, g.activations) for g in analysis.groups] == [("fa", ("wa", "wb"), ("x",))]
    for candidate in (W8A16, W8A8, W4A8):
        x_hat = hand_act(X, candidate.a_bits)
        ya, yb = X @ wa.T, X @ wb.T
        ya_hat = x_hat @ hand_weight(wa, candidate.w_bits).T
        yb_hat = x_hat @ (16 * hand_weight(W2, candidate.w_bits)).T
        noise_a, noise_b = float(np.sum((ya - ya_hat) ** 2)), float(np.sum((yb - yb_hat) ** 2))
        signal_a, signal_b = float(np.sum(ya**2)), float(np.sum(yb**2))
        expected = -10 * math.log10((noise_a / signal_a + noise_b / signal_b) / 2)
        pooled = 10 * math.log10((signal_a + signal_b) / (noise_a + noise_b))
        assert abs(expected - pooled) > 0.05  # the two formulas disagree on this model
        assert table.of("fa", candidate) == pytest.approx(expected, abs=1e-9)


def test_two_outputs_an_untouched_output_adds_signal_only(tmp_path):
    # group fa changes ya only: its ratio is (n_a / s_a + 0 / s_b) / 2, 3 dB above ya alone
    x2 = X[::-1] * 2
    encodings = {**_hand_encodings(("wa", "wb"), ("x1", "x2"))}
    feeds = {"x1": X, "x2": x2}
    analysis, table = _table(_two_gemms_two_inputs(W, W), encodings, feeds, tmp_path / "s.jsonl")
    assert [g.id for g in analysis.groups] == ["fa", "fb"]
    for group, x in (("fa", X), ("fb", x2)):
        for candidate in (W8A16, W8A8, W4A8):
            ref = x @ W.T
            ratio = float(np.sum((ref - hand_act(x, candidate.a_bits) @ hand_weight(W, candidate.w_bits).T) ** 2) / np.sum(ref**2))
            expected = -10 * math.log10(ratio / 2)
            assert table.of(group, candidate) == pytest.approx(expected, abs=1e-9)


# ---------------------------------------------------------------- the digits model


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """Canonical digits model on the research profile, its encodings and a finished store."""
    model = model_io.load(DIGITS)
    calib = load_arrays(DIGITS_CALIB, model)
    prepared = steps.prepare(model, hw_profile.load_profile("research"), calib)
    encodings = calibrate(prepared.model, prepared.graph, prepared.analysis, calib, profile=prepared.profile)
    store = ResultStore(tmp_path_factory.mktemp("digits") / "phase1.jsonl", "digits-key")
    table = sensitivity(context_for(prepared.model, prepared.analysis, encodings, calib, batch_size=32), store=store)
    return prepared, encodings, calib, store, table


def _tasks(prepared) -> list[tuple[str, Candidate]]:
    return [(g.id, c) for g in prepared.analysis.groups for c in g.candidates]


def _whole_model_table(digits) -> dict[tuple[str, Candidate], float]:
    """measure() of the full model with one group quantized, for every (group, candidate)."""
    prepared, encodings, calib, _, _ = digits
    reference = reference_outputs(prepared.model, calib, batch_size=32)
    whole = {}
    for group_id, candidate in _tasks(prepared):
        qdq = insert_qdq(
            prepared.model, analysis=prepared.analysis, plan=Plan({group_id: candidate}),
            encodings=encodings, weights=WeightStorage.FAKE_FLOAT,
        )
        whole[(group_id, candidate)] = measure(qdq, calib, reference, batch_size=32).sqnr_db
    return whole


@pytest.fixture(scope="module")
def whole_model_table(digits):
    return _whole_model_table(digits)


def test_suffix_evaluation_matches_whole_model_evaluation(digits, whole_model_table):
    # the noise-to-signal ratios agree to 0.1 % (0.004 dB), float rounding at most
    table = digits[4]
    assert set(whole_model_table) == set(table.sqnr_db) == set(_tasks(digits[0]))
    for task, whole in whole_model_table.items():
        assert math.isfinite(whole)
        assert 10 ** (-table.sqnr_db[task] / 10) == pytest.approx(10 ** (-whole / 10), rel=1e-3), task


def test_digits_table_does_not_depend_on_batch_size(digits, tmp_path):
    prepared, encodings, calib, _, table = digits
    for batch_size in (1, 3, 64):
        store = ResultStore(tmp_path / f"s{batch_size}.jsonl", "k")
        context = context_for(prepared.model, prepared.analysis, encodings, calib, batch_size=batch_size)
        other = sensitivity(context, store=store)
        for task, value in table.sqnr_db.items():
            assert other.sqnr_db[task] == pytest.approx(value, abs=1e-9), (batch_size, task)


def _sensitivity(digits, store: ResultStore):
    prepared, encodings, calib, _, _ = digits
    calls = []
    table = sensitivity(
        context_for(prepared.model, prepared.analysis, encodings, calib, batch_size=32), store=store,
        progress=lambda done, total, what: calls.append(what),
    )
    return table, [c for c in calls if c != "done"]


def test_results_are_stored_as_measured(digits):
    prepared, _, _, store, table = digits
    entries = list(store.entries(STORE_KIND))
    stored = [(e["group"], Candidate.parse(e["candidate"])) for e in entries]
    assert len(stored) == len(set(stored)) == len(_tasks(prepared))  # each once, none missing
    assert set(stored) == set(_tasks(prepared))
    for entry in entries:
        ratio = float(np.mean(np.array(entry["noise"]) / np.array(entry["signal"])))
        assert table.of(entry["group"], Candidate.parse(entry["candidate"])) == -10 * math.log10(ratio)


def test_second_call_with_the_same_store_evaluates_nothing(digits, tmp_path):
    store = ResultStore(tmp_path / "phase1.jsonl", "k")
    first, evaluated = _sensitivity(digits, store)
    assert len(evaluated) == len(_tasks(digits[0]))
    size = store.path.stat().st_size
    second, evaluated_again = _sensitivity(digits, store)
    assert evaluated_again == []
    assert store.path.stat().st_size == size
    assert second == first == digits[4]


def test_a_store_written_under_another_key_is_ignored(digits, tmp_path):
    _, _, _, finished, table = digits
    path = tmp_path / "phase1.jsonl"
    # the finished results, under another key and with every noise made 100x larger
    lines = []
    for line in finished.path.read_text().splitlines():
        entry = json.loads(line)
        entry["key"], entry["noise"] = "another-key", [n * 100 for n in entry["noise"]]
        lines.append(json.dumps(entry))
    path.write_text("\n".join(lines) + "\n")
    stale_lines = len(lines)
    other, evaluated = _sensitivity(digits, ResultStore(path, "k"))
    assert len(evaluated) == len(_tasks(digits[0]))
    assert other == table
    assert len(path.read_text().splitlines()) == 2 * stale_lines


def test_a_torn_last_line_is_ignored_and_measured_again(digits, tmp_path):
    _, _, _, finished, table = digits
    path = tmp_path / "phase1.jsonl"
    lines = finished.path.read_text().splitlines()
    path.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][: len(lines[-1]) // 2])
    last = json.loads(lines[-1])
    resumed, evaluated = _sensitivity(digits, ResultStore(path, finished.key))
    assert evaluated == [f"{last['group']} @ {last['candidate']}"]
    assert resumed == table
    written = path.read_text().splitlines()
    assert len(written) == len(lines) + 1  # the torn fragment stays on its own line
    assert json.loads(written[-1])["noise"] == last["noise"]


# ---------------------------------------------------------------- interrupting a real run


def _command(output_dir: Path) -> list[str]:
    # batch size 4 makes phase 1 last ~0.8 s, a wide window to interrupt it in
    return [
        sys.executable, "-m", "onnxmp.cli", "quantize", str(DIGITS), "--profile", "research",
        "--target-bops", "0.3", "--calib", str(DIGITS_CALIB), "-o", str(output_dir), "--batch-size", "4",
    ]


def _start(output_dir: Path) -> subprocess.Popen:
    return subprocess.Popen(
        _command(output_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
        preexec_fn=default_sigint,
    )



def _interrupt(output_dir: Path, sig: int) -> tuple[int, str]:
    """Start a run, wait until phase 1 has stored 3 results, send `sig`; exit code and stderr."""
    proc = _start(output_dir)
    store = output_dir / run_store.STORE_NAME
    deadline = time.monotonic() + 60
    try:
        while not (store.exists() and store.read_bytes().count(b"\n") >= 3):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "phase 1 never started"
            time.sleep(0.005)
        assert proc.poll() is None, "the run finished before it could be interrupted"
    except BaseException:
        proc.kill()
        proc.communicate()
        raise
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    return proc.returncode, stderr


def _phase1_results(output_dir: Path) -> dict[tuple[str, str], tuple]:
    lines = (output_dir / run_store.STORE_NAME).read_text().splitlines()
    entries = [e for line in lines if line.endswith("}") and (e := json.loads(line))["kind"] == STORE_KIND]
    results = {(e["group"], e["candidate"]): (e["signal"], e["noise"]) for e in entries}
    assert len(results) == len(entries)  # nothing measured twice
    return results


def test_interrupted_runs_resume_to_the_same_result(tmp_path):
    clean, killed, interrupted = tmp_path / "clean", tmp_path / "killed", tmp_path / "interrupted"
    baseline = _start(clean)  # runs alongside the first interrupted run

    returncode, _ = _interrupt(killed, signal.SIGKILL)
    _, stderr = baseline.communicate(timeout=120)
    assert baseline.returncode == 0, stderr
    assert returncode == -signal.SIGKILL
    assert not (killed / "plan.json").exists()
    stored = (killed / run_store.STORE_NAME).read_bytes().count(b"\n")
    assert 3 <= stored < len(_phase1_results(clean))

    returncode, stderr = _interrupt(interrupted, signal.SIGINT)
    assert returncode == 130
    assert stderr.splitlines() == [
        f"onnxmp: interrupted; finished phase-1 results are kept in {interrupted}/{run_store.STORE_NAME}"
    ]
    assert not (interrupted / "plan.json").exists()
    kept = _phase1_results(interrupted)
    assert 3 <= len(kept) < len(_phase1_results(clean))

    reruns = {output_dir: _start(output_dir) for output_dir in (killed, interrupted)}
    for output_dir, rerun in reruns.items():
        _, stderr = rerun.communicate(timeout=120)
        assert rerun.returncode == 0, stderr
        for name in ("plan.json", "sensitivity.json", "pareto.csv"):
            assert (output_dir / name).read_text() == (clean / name).read_text(), name
        assert _phase1_results(output_dir) == _phase1_results(clean)


def test_damaged_lines_with_the_right_key_are_measured_again(digits, tmp_path):
    _, _, _, finished, table = digits
    path = tmp_path / "phase1.jsonl"
    lines = finished.path.read_bytes().splitlines()
    first, second, third = (json.loads(line) for line in lines[:3])
    del first["noise"]  # a field cut off
    second["signal"] = "1e3"  # a field of the wrong type
    damaged = [json.dumps(first).encode(), json.dumps(second).encode(), lines[2].replace(b'"group"', b'"gr\xffup"')]
    path.write_bytes(b"\n".join(damaged + lines[3:]) + b"\n")
    resumed, evaluated = _sensitivity(digits, ResultStore(path, finished.key))
    assert sorted(evaluated) == sorted(f"{e['group']} @ {e['candidate']}" for e in (first, second, third))
    assert resumed == table


def test_reference_outputs_that_overflow_name_the_output():
    from onnxmp.errors import CalibrationError

    # conv_relu: conv's sums of 27 terms of +-3e38 * w overflow (to NaN where +inf meets -inf); y, the output,
    # is a tensor calibration never sees (no quantized op reads it)
    model = builders.canonical(builders.conv_relu()).model
    calib = CalibrationSet({"x": np.full((2, 3, 8, 8), 3e38, np.float32)})
    with pytest.raises(CalibrationError, match=r"^calibration data: tensor 'y' overflows float32 \(range "):
        reference_outputs(model, calib, batch_size=2)


def test_reference_outputs_own_their_memory():
    # kept for the whole run: ORT's own output arrays would keep the reference session's arena alive
    model = builders.canonical(builders.conv_relu()).model
    calib = CalibrationSet({"x": np.ones((5, 3, 8, 8), np.float32)})
    reference = reference_outputs(model, calib, batch_size=2)
    assert [run.shape[0] for run in reference["y"]] == [2, 2, 1]
    assert all(run.flags.owndata for run in reference["y"])
