"""Border costs on ONNX Runtime: what a tensor costs where an integer group meets a float one.

Why: the in-context estimate (float time + each group's share change) holds for homogeneous
models but missed a mixed EfficientNet-Lite0 plan by -62 %: a float group between int8 groups
pays, at each of its borders, a standalone QuantizeLinear or DequantizeLinear, the layout
conversions between ORT's int8 NHWC and float NCHWc convolutions, and an int8 producer whose
output is not quantized loses its QLinearConv fusion (it runs as DequantizeLinear + float).
None of this is any group's share, so it is priced per border tensor.

Why fitted, not timed per tensor: a Q/DQ pair timed alone at a tensor's shape sees none of the
layout conversions or the lost fusion (the same mistake as timing subgraphs alone, +552 % on
W8A8), and timing every border in its own whole model costs one session per tensor and
direction, each difference buried in run-to-run noise. So a handful of whole-model probes
(alternating float and integer groups in one quarter of the network at a time, both
parities) are each timed alternately with the all-integer model (so the machine's load
drifts out of their difference), and their residuals against the border-free estimate's
difference are fitted by least squares to `offset + count * fixed + elements * per_element`:
every border adds a fixed number of nodes (a launch cost each) moving the tensor's elements
(memory-bound work). `offset` absorbs what the differences leave of the border-free estimate's
own error and is not charged.

Rule cases:
1. A candidate runs as an integer kernel on ORT's CPU provider iff its activations are 8
   bits and its weights (if any) 5-8 bits (README "Deploying with ONNX Runtime"); anything
   else (float, A16, W4) runs as float plus dequantization.
2. A border is a tensor produced by one group's op (through its fused Relu/Clip) and
   quantized by another group (its reader); it costs when the two groups' kinds differ.
   Tensors from graph inputs or ops left in float are in the reader's share already.
3. Fitted costs are clipped at 0 (a negative coefficient is refitted without it).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from onnxmp.graph import DataflowGraph
from onnxmp.records import Candidate, GroupAnalysis, Plan, QuantizerGroup

_FUSED = frozenset({"Relu", "Clip"})
MEGA = 1e6


class KernelKind(enum.Enum):
    """How ORT's CPU provider runs a group: integer kernels, or float (plus dequantization)."""

    INTEGER = "integer"
    FLOAT = "float"


def kind_of(candidate: Candidate) -> KernelKind:
    """Rule 1.

    >>> kind_of(Candidate(8, 8)).value, kind_of(Candidate(8, 16)).value, kind_of(Candidate(None, 8)).value
    ('integer', 'float', 'integer')
    """
    weights_ok = candidate.w_bits is None or 5 <= candidate.w_bits <= 8
    return KernelKind.INTEGER if candidate.a_bits == 8 and weights_ok else KernelKind.FLOAT


@dataclass(frozen=True)
class Border:
    """A tensor between two groups (rule 2) and its elements per sample (batch 1)."""

    tensor: str
    producer: str
    reader: str
    elements: int


@dataclass(frozen=True)
class BorderCost:
    """ms per crossing border: `fixed_ms + elements * per_melement_ms / 1e6`; `offset_ms` is the
    fit's intercept (the border-free estimate's own error), kept for the record only."""

    fixed_ms: float = 0.0
    per_melement_ms: float = 0.0
    offset_ms: float = 0.0

    def of(self, border: Border) -> float:
        return self.fixed_ms + border.elements * self.per_melement_ms / MEGA


def borders_of(graph: DataflowGraph, analysis: GroupAnalysis) -> tuple[Border, ...]:
    """Rule 2: every (tensor, producer group, reader group), in reader order; `graph` has
    concrete shapes (batch 1) for the element counts (unknown shapes count 0 elements)."""
    owner = {op: g.id for g in analysis.groups for op in g.ops}
    found = []
    for group in analysis.groups:
        for tensor in group.activations:
            producer = _group_producer(graph, tensor, owner)
            if producer is None or producer == group.id:
                continue
            found.append(Border(tensor, producer, group.id, _elements(graph.shapes.get(tensor))))
    return tuple(found)


def _elements(shape) -> int:
    dims = [d for d in shape or () if isinstance(d, int) and d > 0]
    return math.prod(dims) if shape and len(dims) == len(shape) else 0


def _group_producer(graph: DataflowGraph, tensor: str, owner: Mapping[str, str]) -> str | None:
    node = graph.producer(tensor)
    while node is not None and node.name not in owner and node.op_type in _FUSED:
        node = graph.producer(node.input[0])
    return None if node is None else owner.get(node.name)


def crossing(plan: Plan, borders: Sequence[Border]) -> list[Border]:
    """The borders whose two groups run as different kinds under `plan`."""
    return [b for b in borders if kind_of(plan[b.producer]) is not kind_of(plan[b.reader])]


def neighbours(borders: Sequence[Border]) -> dict[str, set[str]]:
    """Group -> the groups it shares a border with (whose marginal cost a flip of it changes)."""
    found: dict[str, set[str]] = {}
    for b in borders:
        found.setdefault(b.producer, set()).add(b.reader)
        found.setdefault(b.reader, set()).add(b.producer)
    return found


def probe_plans(groups: Sequence[QuantizerGroup], integer: Callable[[QuantizerGroup], Candidate | None],
                floating: Callable[[QuantizerGroup], Candidate], parts: int = 4) -> list[Plan]:
    """All-integer, then for each of `parts` consecutive slices of the groups and each parity,
    the plan with every other group of that slice float and the rest integer. Groups without
    an integer candidate stay float in every probe."""
    def plan_of(floats: range) -> Plan:
        choices = {}
        for i, group in enumerate(groups):
            own = integer(group)
            choices[group.id] = floating(group) if own is None or i in floats else own
        return Plan(choices)

    n = len(groups)
    probes = [plan_of(range(0))]
    for part in range(parts):
        lo, hi = part * n // parts, (part + 1) * n // parts
        probes += [plan_of(range(lo + (lo + parity) % 2, hi, 2)) for parity in (0, 1)]
    return list(dict.fromkeys(probes))


def fit_border_cost(samples: Sequence[tuple[int, int, float]]) -> BorderCost:
    """Rule 3: least squares of residual ms on (1, crossing count, crossing elements).

    >>> c = fit_border_cost([(0, 0, 0.1), (2, 1_000_000, 0.4), (4, 1_000_000, 0.6), (2, 3_000_000, 0.6)])
    >>> round(c.fixed_ms, 6), round(c.per_melement_ms, 6), round(c.offset_ms, 6)
    (0.1, 0.1, 0.1)
    """
    rows = np.array([[1.0, count, elements / MEGA] for count, elements, _ in samples])
    target = np.array([r for _, _, r in samples])
    active = [0, 1, 2]
    while True:
        coef = np.zeros(3)
        coef[active] = np.linalg.lstsq(rows[:, active], target, rcond=None)[0]
        negative = [i for i in active[1:] if coef[i] < 0]
        if not negative:
            return BorderCost(float(coef[1]), float(coef[2]), float(coef[0]))
        active.remove(min(negative, key=lambda i: coef[i]))
