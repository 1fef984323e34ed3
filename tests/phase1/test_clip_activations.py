"""Output-aware activation clipping: the factor chosen is the one best at the network output.

One activation x[N,4] whose channel 3 is an outlier (100, the other channels in [0, 1]) feeds
y = x * mask. Its 8-bit encoding covers [0, 100] (the MSE range keeps the outlier: clipping
it costs (100 - high)^2 per sample, far more than the step noise of the bulk).
- mask [1, 1, 1, 0]: the outlier never reaches the output, so the tightest candidate wins
  (x0.18 -> range [0, 18], still above the bulk, step 5.6 times finer).
- mask [1, 1, 1, 1]: clipping the outlier to 70 costs 900 per sample at the output, more
  than any step gain, so the MSE range (x1.0) is kept.
"""

from __future__ import annotations

import numpy as np
import pytest

from onnxmp.calib_data import CalibrationSet
from onnxmp.phase1 import clip_activations as clipping
from onnxmp.phase1.sensitivity import context_for
from onnxmp.records import Candidate, Grid, GroupAnalysis, QuantizerGroup, TensorEncoding
from onnxmp.store import ResultStore
from tests import builders

X8 = TensorEncoding("x", 8, (100 / 255,), (0,), Grid.ASYMMETRIC_UNSIGNED)


def _masked(mask: list[float]):
    return builders._model(
        """
        g (float[N,4] x) => (float[N,4] y) {
            [mul] y = Mul (x, m)
        }""",
        {"m": np.array(mask, np.float32)},
    )


def _calib() -> CalibrationSet:
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (64, 4)).astype(np.float32)
    x[:, 3] = 100.0
    return CalibrationSet({"x": x})


def _chosen(mask: list[float], tmp_path) -> TensorEncoding:
    analysis = GroupAnalysis((QuantizerGroup("x", (), ("x",), ("mul",), (Candidate(None, 8),)),), ())
    context = context_for(_masked(mask), analysis, {("x", 8): X8}, _calib(), batch_size=16)
    store = ResultStore(tmp_path / "phase1.jsonl", "k")
    return clipping.clip_activations(context, frozenset({"m"}), store=store)[("x", 8)]


def test_an_outlier_the_output_never_sees_is_clipped_to_the_tightest_candidate(tmp_path):
    chosen = _chosen([1, 1, 1, 0], tmp_path)
    assert chosen.zero_point == (0,)
    assert chosen.scale[0] == pytest.approx(100 / 255 * min(clipping.CLIP_FACTORS))


def test_an_outlier_the_output_keeps_keeps_the_mse_range(tmp_path):
    assert _chosen([1, 1, 1, 1], tmp_path) == X8


def test_measurements_are_stored_and_read_back(tmp_path):
    first = _chosen([1, 1, 1, 0], tmp_path)
    entries = list(ResultStore(tmp_path / "phase1.jsonl", "k").entries(clipping.STORE_KIND))
    assert len(entries) == len(clipping.CLIP_FACTORS)  # one tensor, one width, every factor
    assert {e["group"] for e in entries} == {f"x x{f:g}" for f in clipping.CLIP_FACTORS}
    assert _chosen([1, 1, 1, 0], tmp_path) == first  # resumed: nothing measured again
    assert len(list(ResultStore(tmp_path / "phase1.jsonl", "k").entries(clipping.STORE_KIND))) == len(entries)


def test_weights_and_16_bit_activations_are_left_alone(tmp_path):
    x16 = TensorEncoding("x", 16, (100 / 65535,), (0,), Grid.ASYMMETRIC_UNSIGNED)
    w8 = TensorEncoding("m", 8, (1 / 127,), (0,), Grid.SYMMETRIC_SIGNED)
    analysis = GroupAnalysis((QuantizerGroup("x", (), ("x",), ("mul",), (Candidate(None, 16),)),), ())
    context = context_for(_masked([1, 1, 1, 0]), analysis, {("x", 16): x16, ("m", 8): w8}, _calib())
    chosen = clipping.clip_activations(context, frozenset({"m"}), store=ResultStore(tmp_path / "s.jsonl", "k"))
    assert chosen == {("x", 16): x16, ("m", 8): w8}
    assert not list(ResultStore(tmp_path / "s.jsonl", "k").entries(clipping.STORE_KIND))  # nothing measured
