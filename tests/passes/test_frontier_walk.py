"""The frontier walk: float values of every suffix's cut tensors, chunked, within a byte budget.

Checked on the shipped digits CNN (residual Add, Concat, depthwise, Flatten->Gemm), whose
group frontiers include several tensors at once: values against the whole float model,
bit-identical values whichever step a walk starts at (what makes phase-1 results
independent of how the work is split), and the budget deciding what is stored.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from onnxmp import hw_profile, model_io, runtime, steps
from onnxmp.calib_data import load_arrays
from onnxmp.passes import frontier_walk
from onnxmp.passes.extract_subgraph import affected_nodes, frontier
from onnxmp.passes.frontier_walk import FrontierWalk
from onnxmp.phase1.jobs import network_order
from tests import builders, oracles

REPO = Path(__file__).resolve().parents[2]
DIGITS = REPO / "models" / "digits_cnn.onnx"
DIGITS_CALIB = REPO / "models" / "digits_calib.npz"
SAMPLES = 23  # not a multiple of the chunk size: the last chunk is short


@pytest.fixture(scope="module")
def digits():
    model = model_io.load(DIGITS)
    calib = load_arrays(DIGITS_CALIB, model)
    inputs = {k: v[:SAMPLES] for k, v in calib.arrays.items()}
    prepared = steps.prepare(model, hw_profile.load_profile("npu"), calib)
    graph = prepared.graph
    frontiers = [frontier(graph, affected_nodes(graph, g)) for g in network_order(graph, prepared.analysis.groups)]
    return prepared.model, graph, inputs, frontiers


def _walk(digits, **kw) -> FrontierWalk:
    model, graph, inputs, frontiers = digits
    return FrontierWalk(model, graph, inputs, frontiers, batch_size=kw.pop("batch_size", 5), **kw)


def _collect(walk: FrontierWalk, step: int) -> dict[str, np.ndarray]:
    parts: dict[str, list[np.ndarray]] = {}
    starts = []
    for start, values in walk.chunks(step):
        starts.append(start)
        for name, value in values.items():
            parts.setdefault(name, []).append(value)
    assert starts == list(range(0, SAMPLES, 5))
    return {name: np.concatenate(chunks) for name, chunks in parts.items()}


def test_frontiers_are_several_tensors_somewhere(digits):
    # the walk is only tested for real if some frontier is more than the model input
    _, graph, _, frontiers = digits
    assert len(frontiers) >= 5
    assert any(len(f) >= 2 for f in frontiers)
    assert any(set(f) - set(graph.graph_inputs) for f in frontiers)


@pytest.mark.parametrize("budget", [0, 2**40])
def test_values_equal_the_whole_float_model(digits, budget):
    model, _, inputs, frontiers = digits
    wanted = sorted({t for f in frontiers for t in f})
    sess = runtime.session(oracles.with_outputs(model, wanted))
    whole = dict(zip(wanted, sess.run(wanted, inputs), strict=True))
    walk = _walk(digits, budget_bytes=budget)
    for step, tensors in enumerate(frontiers):
        got = _collect(walk, step)
        assert list(got) == list(tensors)
        for name in tensors:
            assert got[name].shape == whole[name].shape
            np.testing.assert_allclose(got[name], whole[name], rtol=1e-5, atol=1e-5, err_msg=name)


def test_a_walk_started_late_gives_bit_identical_values(digits):
    _, _, _, frontiers = digits
    full = _walk(digits, budget_bytes=2**40)
    seen = [_collect(full, step) for step in range(len(frontiers))]
    for first in range(1, len(frontiers)):
        late = _walk(digits, budget_bytes=2**40)
        for step in range(first, len(frontiers)):
            for name, value in _collect(late, step).items():
                assert np.array_equal(value, seen[step][name]), (first, step, name)


def test_zero_budget_stores_nothing_but_the_inputs(digits):
    _, _, inputs, frontiers = digits
    walk = _walk(digits, budget_bytes=0)
    input_bytes = sum(v.nbytes for v in inputs.values())
    for step in range(len(frontiers)):
        _collect(walk, step)
        assert walk.stored_bytes == input_bytes


def test_a_large_budget_stores_frontiers_and_drops_what_is_no_longer_read(digits):
    _, graph, inputs, frontiers = digits
    walk = _walk(digits, budget_bytes=2**40)
    input_bytes = sum(v.nbytes for v in inputs.values())
    stored = []
    for step in range(len(frontiers)):
        _collect(walk, step)
        stored.append(walk.stored_bytes)
    assert max(stored) > input_bytes
    # at the last step only the last frontier (and the inputs) are left
    last = frontiers[-1]
    expected = input_bytes + sum(
        SAMPLES * int(np.prod(graph.shapes[t][1:])) * 4 for t in last if t not in inputs
    )
    assert stored[-1] == expected


def test_stored_frontiers_own_their_memory(digits):
    # a checkpoint outlives its segment session: ORT's own output arrays would keep that session's arena alive
    _, _, inputs, frontiers = digits
    walk = _walk(digits, budget_bytes=2**40)
    computed = 0
    for step in range(len(frontiers)):
        for _, values in walk.chunks(step):  # every frontier fits: each is sliced from the checkpoint
            computed += sum(1 for name, value in values.items() if name not in inputs and value.flags.owndata)
            assert all(value.flags.owndata for name, value in values.items() if name not in inputs)
    assert computed > 0


def test_the_budget_is_a_per_frontier_limit(digits):
    _, graph, inputs, frontiers = digits
    sizes = [sum(SAMPLES * int(np.prod(graph.shapes[t][1:])) * 4 for t in f if t not in inputs) for f in frontiers]
    budget = sorted(s for s in sizes if s)[len([s for s in sizes if s]) // 2]  # the median frontier
    walk = _walk(digits, budget_bytes=budget)
    input_bytes = sum(v.nbytes for v in inputs.values())
    for step in range(len(frontiers)):
        _collect(walk, step)
        fits = 0 < sizes[step] <= budget
        if fits:
            assert walk.stored_bytes >= input_bytes + sizes[step]
        if sizes[step] > budget:
            assert walk.stored_bytes - input_bytes <= 2 * budget


def test_the_walk_cannot_go_back(digits):
    walk = _walk(digits)
    _collect(walk, 2)
    with pytest.raises(ValueError, match="cannot go back"):
        walk.chunks(1)


@pytest.mark.parametrize("budget", [0, 7 * 4 * 6 * 6 * 4, 2**40])  # nothing, r1 alone, everything
def test_a_frontier_mixing_an_input_and_computed_tensors(budget):
    # EfficientNet's first suffixes read the model input and computed tensors at once; with
    # r1 stored and {c2, y} over the budget, the segment computing them does not read x
    canon = builders.canonical(builders.residual_add())
    feeds = builders.feeds_for(canon.model, batch=7)
    frontiers = [("x",), ("r1",), ("x", "c2", "y")]
    walk = FrontierWalk(canon.model, canon.graph, feeds, frontiers, batch_size=3, budget_bytes=budget)
    sess = runtime.session(oracles.with_outputs(canon.model, ["r1", "c2"]))
    r1, c2, y = sess.run(["r1", "c2", "y"], feeds)
    expected = {"x": feeds["x"], "r1": r1, "c2": c2, "y": y}
    for step, tensors in enumerate(frontiers):
        chunks = list(walk.chunks(step))
        assert [start for start, _ in chunks] == [0, 3, 6]
        for name in tensors:
            got = np.concatenate([values[name] for _, values in chunks])
            np.testing.assert_allclose(got, expected[name], rtol=1e-6, atol=1e-6, err_msg=f"{step} {name}")


def test_frontiers_of_unknown_size_are_measured_on_their_first_chunk(digits, monkeypatch):
    # symbolic dims: the walk sizes a frontier from its first computed chunk and keeps that
    # chunk, so every segment session runs each chunk exactly once
    model, _, inputs, frontiers = digits
    wanted = sorted({t for f in frontiers for t in f})
    whole = dict(zip(wanted, runtime.session(oracles.with_outputs(model, wanted)).run(wanted, inputs), strict=True))
    sessions, runs = [], []
    make_session = runtime.session

    class CountingSession:
        def __init__(self, *args, **kwargs):
            self._sess = make_session(*args, **kwargs)
            sessions.append(self)

        def run(self, *args):
            runs.append(self)
            return self._sess.run(*args)

    monkeypatch.setattr(frontier_walk, "_per_sample_bytes", lambda graph, tensors: None)
    monkeypatch.setattr(frontier_walk.runtime, "session", CountingSession)
    walk = _walk(digits, budget_bytes=2**40)
    input_bytes = sum(v.nbytes for v in inputs.values())
    stored = []
    for step, tensors in enumerate(frontiers):
        got = _collect(walk, step)
        stored.append(walk.stored_bytes)
        for name in tensors:
            np.testing.assert_allclose(got[name], whole[name], rtol=1e-5, atol=1e-5, err_msg=name)
    assert max(stored) > input_bytes
    chunks = len(range(0, SAMPLES, 5))
    assert sessions and len(runs) == chunks * len(sessions)
