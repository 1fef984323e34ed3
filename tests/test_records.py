"""Records: parsing, ordering, integer grids and the read-only Plan."""

from __future__ import annotations

import dataclasses

import pytest

from onnxmp.records import (
    Candidate,
    Grid,
    GroupAnalysis,
    Plan,
    QuantizerGroup,
    SkippedOp,
    TensorEncoding,
    integer_range,
)

W8A16, W8A8, W4A8 = Candidate(8, 16), Candidate(8, 8), Candidate(4, 8)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("W4A8", Candidate(4, 8)),
        ("w8a16", Candidate(8, 16)),
        ("  W6A6 ", Candidate(6, 6)),
        ("A8", Candidate(None, 8)),
        ("a16", Candidate(None, 16)),
    ],
)
def test_candidate_parse(text, expected):
    assert Candidate.parse(text) == expected


@pytest.mark.parametrize("text", ["", "W4", "8", "W4A", "A8W4", "W4 A8", "W-4A8", "X8"])
def test_candidate_parse_rejects(text):
    with pytest.raises(
        ValueError, match=r"^not a candidate: .* \(expected e\.g\. 'W4A8' or 'A8'\)$"
    ):
        Candidate.parse(text)


@pytest.mark.parametrize(
    ("candidate", "text", "cost"),
    [
        (Candidate(4, 8), "W4A8", 32),
        (Candidate(8, 16), "W8A16", 128),
        (Candidate(None, 8), "A8", 64),
    ],
)
def test_candidate_str_and_cost(candidate, text, cost):
    assert str(candidate) == text
    assert Candidate.parse(str(candidate)) == candidate
    assert candidate.cost() == cost


def test_candidate_is_frozen_and_hashable():
    with pytest.raises(dataclasses.FrozenInstanceError):
        W4A8.w_bits = 8  # type: ignore[misc]
    assert {W4A8: 1}[Candidate(4, 8)] == 1
    assert sorted([W8A16, W4A8, W8A8]) == [W4A8, W8A8, W8A16]


def test_quantizer_group_highest_lowest():
    group = QuantizerGroup("conv", ("w",), ("x",), ("conv",), (W8A16, W8A8, W4A8))
    assert group.highest == W8A16
    assert group.lowest == W4A8
    with pytest.raises(dataclasses.FrozenInstanceError):
        group.id = "other"  # type: ignore[misc]


def test_group_analysis_lookup_by_id():
    a = QuantizerGroup("a", ("wa",), ("x",), ("a",), (W8A8,))
    b = QuantizerGroup("b", (), ("y", "z"), ("b",), (Candidate(None, 8),))
    analysis = GroupAnalysis((a, b), (SkippedOp("s", "Softmax", "why"),))
    assert analysis.group("b") is b
    assert dict(analysis.anchors) == {}
    with pytest.raises(KeyError):
        analysis.group("missing")


@pytest.mark.parametrize(
    ("bits", "signed", "symmetric", "expected"),
    [
        (8, True, True, (-127, 127)),
        (8, True, False, (-128, 127)),
        (8, False, False, (0, 255)),
        (4, True, True, (-7, 7)),
        (4, False, False, (0, 15)),
        (6, False, False, (0, 63)),
        (16, True, True, (-32767, 32767)),
        (16, False, False, (0, 65535)),
    ],
)
def test_integer_range(bits, signed, symmetric, expected):
    assert integer_range(bits, signed=signed, symmetric=symmetric) == expected


def test_tensor_encoding_grid():
    weight = TensorEncoding("w", 4, (0.1, 0.2), (0, 0), grid=Grid.SYMMETRIC_SIGNED, axis=0)
    act = TensorEncoding("x", 8, (0.02,), (128,), grid=Grid.ASYMMETRIC_UNSIGNED)
    assert (weight.qmin, weight.qmax) == (-7, 7)
    assert (act.qmin, act.qmax, act.axis) == (0, 255, None)


def test_plan_is_a_read_only_ordered_mapping():
    plan = Plan({"b": W8A8, "a": W4A8})
    assert list(plan) == ["b", "a"]
    assert len(plan) == 2
    assert plan["a"] == W4A8
    assert plan.get("missing") is None
    assert repr(plan) == "Plan({'b': W8A8, 'a': W4A8})"
    with pytest.raises(TypeError):
        plan["a"] = W8A8  # type: ignore[index]


def test_plan_equality_and_hash_ignore_order():
    one = Plan({"a": W4A8, "b": W8A8})
    other = Plan({"b": W8A8, "a": W4A8})
    assert one == other
    assert one == {"a": W4A8, "b": W8A8}
    assert hash(one) == hash(other)
    assert len({one, other}) == 1
    assert one != Plan({"a": W8A8, "b": W8A8})


def test_plan_replace_returns_a_new_plan():
    plan = Plan({"a": W8A16, "b": W8A16})
    moved = plan.replace("b", W4A8)
    assert moved == {"a": W8A16, "b": W4A8}
    assert plan == {"a": W8A16, "b": W8A16}


def test_plan_copies_its_input():
    choices = {"a": W8A16}
    plan = Plan(choices)
    choices["a"] = W4A8
    assert plan["a"] == W8A16
