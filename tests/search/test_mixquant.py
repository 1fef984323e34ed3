"""MixQuant as a pure function of a literal quantization-error table: no ONNX Runtime."""

from __future__ import annotations

import math

import numpy as np
import pytest

from onnxmp.records import Candidate, Grid, Plan, QuantizerGroup, TensorEncoding
from onnxmp.search import mixquant
from onnxmp.search.select import select_by_bops
from onnxmp.search.space import QuantErrorTable, SearchSpace, StrategyOptions

NPU = tuple(map(Candidate.parse, ("W8A16", "W8A8", "W4A8")))
RESEARCH = tuple(map(Candidate.parse, ("W8A16", "W8A8", "W6A8", "W8A6", "W6A6", "W4A8", "W6A4", "W4A6", "W4A4")))
W8A8, W6A8, W4A8 = Candidate(8, 8), Candidate(6, 8), Candidate(4, 8)
A16, A8 = Candidate(None, 16), Candidate(None, 8)


def _group(group_id: str, candidates) -> QuantizerGroup:
    return QuantizerGroup(group_id, (f"{group_id}.w",), (f"{group_id}.x",), (group_id,), tuple(candidates))


def _bops(macs: int, candidates) -> dict[Candidate, int]:
    return {c: macs * (c.w_bits or 0) * c.a_bits for c in candidates}


# r: research widths 8, 6, 4 with QE 1, 3, 20 -> ratios to QE(8): 1, 3, 20
# n: npu widths 8, 4 with QE 2, 8           -> ratios 1, 4
# add: no weights, stays at A16 whatever QEM
# MACs r = 10, n = 30; reference (W8A16) = 10*128 + 30*128 = 5120; the sweep costs
# 2560, 2400 (0.469), 1440 (0.281) and 1280 (0.25) of it.
GROUPS = (_group("r", RESEARCH), _group("n", NPU), QuantizerGroup("add", (), ("add.x",), ("add",), (A16, A8)))
BOPS = {"r": _bops(10, RESEARCH), "n": _bops(30, NPU), "add": {A16: 0, A8: 0}}
TABLE = QuantErrorTable({("r", 8): 1.0, ("r", 6): 3.0, ("r", 4): 20.0, ("n", 8): 2.0, ("n", 4): 8.0})
SPACE = SearchSpace(GROUPS, BOPS, 5120, quant_errors=TABLE)


@pytest.mark.parametrize(
    ("qem", "expected"),
    [
        (1.0, {"r": W8A8, "n": W8A8}),  # only QE(8) <= 1 * QE(8)
        (2.99, {"r": W8A8, "n": W8A8}),  # 3 > 2.99
        (3.0, {"r": W6A8, "n": W8A8}),  # QE(6) = 3 <= 3 * 1; QE(4) = 8 > 3 * 2
        (4.0, {"r": W6A8, "n": W4A8}),  # 8 <= 4 * 2
        (20.0, {"r": W4A8, "n": W4A8}),  # 20 <= 20 * 1
    ],
)
def test_each_group_takes_the_lowest_width_the_inequality_allows(qem, expected):
    assert mixquant.configuration(SPACE, qem) == Plan({**expected, "add": A16})


def test_the_activation_width_is_the_one_most_weight_widths_share():
    # research: A8 and A6 each carry W8, W6 and W4; the wider wins. npu: A8 carries W8 and W4.
    assert [mixquant.kernel_for(GROUPS[0], b) for b in (8, 6, 4)] == [W8A8, W6A8, W4A8]
    assert [mixquant.kernel_for(GROUPS[1], b) for b in (8, 4)] == [W8A8, W4A8]
    # a group whose 4-bit weights have no A8 kernel takes the nearest activation width, wider on a tie
    odd = _group("odd", tuple(map(Candidate.parse, ("W8A8", "W8A16", "W4A16", "W4A4"))))
    assert mixquant.kernel_for(odd, 4) == Candidate(4, 16)  # |16-8| = |4-8|: the wider


def test_the_sweep_has_one_point_per_distinct_configuration_at_the_breakpoints():
    assert mixquant.breakpoints(SPACE) == (1.0, 3.0, 4.0, 20.0)
    curve = mixquant.pareto_curve(SPACE, StrategyOptions())
    # BOPs by hand: r 10*{64, 48, 32}, n 30*{64, 32}
    assert [p.bops_rel * 5120 for p in curve] == pytest.approx([640 + 1920, 480 + 1920, 480 + 960, 320 + 960])
    assert [p.plan["r"] for p in curve] == [W8A8, W6A8, W6A8, W4A8]
    assert all(math.isnan(p.predicted_sqnr_db) for p in curve)  # no phase 1, no prediction


@pytest.mark.parametrize(("target", "qem", "bops"), [(0.5, 1.0, 2560), (0.47, 3.0, 2400), (0.46, 4.0, 1440), (0.3, 4.0, 1440), (0.25, 20.0, 1280)])
def test_bisection_on_qem_lands_at_or_just_below_the_budget(target, qem, bops):
    assert mixquant.qem_for_budget(SPACE, target) == qem
    curve = mixquant.pareto_curve(SPACE, StrategyOptions(target_bops=target))
    chosen = select_by_bops(curve, target).point
    assert chosen.plan == mixquant.configuration(SPACE, qem)
    assert chosen.bops_rel * 5120 == pytest.approx(bops)


def test_one_qem_gives_one_point():
    (point,) = mixquant.pareto_curve(SPACE, StrategyOptions(qem=3.5))
    assert point.plan == Plan({"r": W6A8, "n": W8A8, "add": A16})


def test_a_zero_baseline_error_keeps_the_baseline_unless_the_lower_width_is_exact_too():
    table = QuantErrorTable({("r", 8): 0.0, ("r", 6): 0.0, ("r", 4): 1e-9, ("n", 8): 0.0, ("n", 4): 1e-9})
    space = SearchSpace(GROUPS, BOPS, 5120, quant_errors=table)
    assert mixquant.configuration(space, 1e6) == Plan({"r": W6A8, "n": W8A8, "add": A16})


def test_quantization_errors_are_the_mse_of_the_encodings_round_trip():
    # w = [[0.3, -0.7], [0.2, 0.1]] per output channel (axis 0), 4-bit scales 0.5 and 0.1:
    #   channel 0: round(0.6) = 1 -> 0.5 (err 0.2), round(-1.4) = -1 -> -0.5 (err -0.2)
    #   channel 1: round(2) = 2 -> 0.2 (err 0),      round(1) = 1 -> 0.1 (err 0)
    #   MSE = (0.04 + 0.04) / 4 = 0.02
    w = np.array([[0.3, -0.7], [0.2, 0.1]], np.float32)
    group = _group("g", (W8A8, W4A8))
    encodings = {
        ("g.w", 4): TensorEncoding("g.w", 4, (0.5, 0.1), (0, 0), Grid.SYMMETRIC_SIGNED, axis=0),
        ("g.w", 8): TensorEncoding("g.w", 8, (0.7 / 127, 0.2 / 127), (0, 0), Grid.SYMMETRIC_SIGNED, axis=0),
    }
    table = mixquant.quantization_errors((group,), {"g.w": w}, encodings)
    assert table.of("g", 4) == pytest.approx(0.02, rel=1e-6)
    assert 0 < table.of("g", 8) < (0.7 / 127) ** 2 / 4  # at most half a step per element


@pytest.mark.parametrize("seed", list(range(10)))
def test_random_tables_respect_the_kernels_and_the_inequality(seed):
    rng = np.random.default_rng(seed)
    groups = tuple(_group(f"g{i}", RESEARCH if rng.random() < 0.5 else NPU) for i in range(6))
    mse = {}
    for g in groups:
        qe = float(rng.uniform(0.1, 1.0))
        for b in mixquant.weight_widths(g)[::-1]:  # 4 first: errors grow as widths fall
            mse[(g.id, b)] = qe * float(rng.uniform(1.0, 30.0)) ** ((8 - b) / 2)
    space = SearchSpace(groups, {g.id: _bops(int(rng.integers(1, 100)), g.candidates) for g in groups}, 10**6,
                        quant_errors=QuantErrorTable(mse))
    previous = None
    for qem in sorted(rng.uniform(1, 300, size=20)):
        plan = mixquant.configuration(space, qem)
        for g in groups:
            chosen = plan[g.id]
            assert chosen in g.candidates and chosen == mixquant.kernel_for(g, chosen.w_bits)
            allowed = [b for b in mixquant.weight_widths(g) if mse[(g.id, b)] <= qem * mse[(g.id, 8)]]
            assert chosen.w_bits == min(allowed)
            assert previous is None or chosen.w_bits <= previous[g.id].w_bits  # widths only fall as QEM grows
        previous = plan
    bops = [p.bops_rel for p in mixquant.pareto_curve(space, StrategyOptions())]
    assert bops == sorted(bops, reverse=True) and len(set(bops)) == len(bops)
