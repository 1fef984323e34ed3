"""Float as a candidate: a group may stay unquantized when that is what runs fastest.

Why: on ONNX Runtime's CPU provider a W8A16 layer runs as DequantizeLinear + float kernel,
slower than leaving it float, so "the fastest model within 1 point" must be able to keep a
group in float. Float is spelled W32A32 (A32 for groups without weights): its phase-1
SQNR is +inf without measuring, its BOPs are MACs * 32 * 32, and `quantized_part` drops it
from a plan before Q/DQ insertion (groups missing from a plan stay float).
"""

from __future__ import annotations

import math
from dataclasses import replace

from onnxmp.records import Candidate, GroupAnalysis, Plan, SensitivityTable

FLOAT_BITS = 32
FLOAT = Candidate(FLOAT_BITS, FLOAT_BITS)
FLOAT_ACTIVATION = Candidate(None, FLOAT_BITS)


def float_of(candidate: Candidate) -> Candidate:
    """The float candidate of the same kind (with or without weights)."""
    return FLOAT_ACTIVATION if candidate.w_bits is None else FLOAT


def is_float(candidate: Candidate) -> bool:
    return candidate.a_bits == FLOAT_BITS


def with_float(analysis: GroupAnalysis) -> GroupAnalysis:
    """Every group with float prepended as its highest candidate."""
    groups = tuple(replace(g, candidates=(float_of(g.highest), *g.candidates)) for g in analysis.groups)
    return replace(analysis, groups=groups)


def table_with_float(table: SensitivityTable, analysis: GroupAnalysis) -> SensitivityTable:
    """`table` plus +inf dB (no noise) for every group left in float."""
    extra = {(g.id, float_of(g.highest)): math.inf for g in analysis.groups}
    return SensitivityTable({**table.sqnr_db, **extra})


def label(candidate: Candidate) -> str:
    """How reports name a candidate: `float` for a group left float, else W8A8, A8, ...

    >>> label(FLOAT), label(Candidate(8, 8))
    ('float', 'W8A8')
    """
    return "float" if is_float(candidate) else str(candidate)


def estimate_error(estimate_ms: float, measured_ms: float) -> float:
    """(estimate - measured) / measured, in percent.

    >>> estimate_error(11.0, 10.0)
    10.0
    """
    return 100 * (estimate_ms - measured_ms) / measured_ms


def quantized_part(plan: Plan) -> Plan:
    """The plan without its float groups, for Q/DQ insertion."""
    return Plan({g: c for g, c in plan.items() if not is_float(c)})
