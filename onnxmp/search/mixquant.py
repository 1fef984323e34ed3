"""MixQuant (Kloberdanz & Le 2023, Algorithm 1) as a PTQ strategy: weight widths from weight error.

Why: MixQuant needs no phase 1 and no data at all. It picks each layer's weight bit-width
from the weights' own quantization error, QE(b) = MSE(W, dequant(quant(W))), against the
8-bit error: a group takes the lowest width b with QE(b) <= QEM * QE(8). One multiplier
(QEM) trades bits for error; sweeping it gives MixQuant's own curve.

Rule cases (where this PTQ form departs from the paper, see README "Other strategies"):
1. Widths are the ones the group's candidates allow (the paper tries 8..2); the baseline is
   QE at 8 bits, or at the highest allowed width when 8 is not allowed.
2. QE uses our range setting (symmetric per-channel, MSE-searched scale per width, the very
   encodings `calibrate` made), where the paper used its own quantizer.
3. The paper keeps activations in float. Here the activation width comes from the profile:
   each group keeps the activation width that the most of its weight widths share (A8 on
   `npu` and `research`), ties to the wider; a weight width without a kernel at that
   activation width takes its kernel with the nearest activation width (wider on a tie).
4. Groups without weights (an Add, a pooling) stay at their highest candidate, as in greedy.
5. The curve has one point per distinct configuration. The configuration changes only where
   QEM crosses some ratio QE(b)/QE(8), so those ratios are the exact sweep; a budget is met by
   bisection over them (`qem_for_budget`), which lands at or just below it.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping

import numpy as np

from onnxmp import quant_math
from onnxmp.records import Candidate, ParetoCurve, Plan, QuantizerGroup, TensorEncoding
from onnxmp.search.space import QuantErrorTable, SearchSpace, StrategyOptions, curve_of

BASELINE_BITS = 8


def quantization_errors(
    groups: tuple[QuantizerGroup, ...],
    weights: Mapping[str, np.ndarray],
    encodings: Mapping[tuple[str, int], TensorEncoding],
) -> QuantErrorTable:
    """QE of every weighted group at every weight width its candidates allow, from `encodings`."""
    mse = {}
    for group in groups:
        for bits in weight_widths(group):
            squared, count = 0.0, 0
            for name in group.weights:
                w = np.asarray(weights[name], np.float32)
                diff = w.astype(np.float64) - _fake_quantized(w, encodings[(name, bits)])
                squared += float(np.sum(diff * diff))
                count += w.size
            mse[(group.id, bits)] = squared / count if count else 0.0
    return QuantErrorTable(mse)


def _fake_quantized(w: np.ndarray, encoding: TensorEncoding) -> np.ndarray:
    shape = [1] * w.ndim
    if encoding.axis is not None:
        shape[encoding.axis] = -1
    scale = np.asarray(encoding.scale, np.float32).reshape(shape)
    zero_point = np.asarray(encoding.zero_point, np.int64).reshape(shape)
    return quant_math.fake_quantize(w, scale, zero_point, encoding.qmin, encoding.qmax)


def weight_widths(group: QuantizerGroup) -> tuple[int, ...]:
    """The distinct weight widths of the group's candidates, highest first (none if weightless)."""
    return tuple(sorted({c.w_bits for c in group.candidates if c.w_bits is not None}, reverse=True))


def kernel_for(group: QuantizerGroup, w_bits: int) -> Candidate:
    """The candidate a weight width runs on: the group's shared activation width (rule 3)."""
    shares: dict[int, int] = {}
    for c in group.candidates:
        shares[c.a_bits] = shares.get(c.a_bits, 0) + 1
    a_star = max(shares, key=lambda a: (shares[a], a))
    with_w = [c for c in group.candidates if c.w_bits == w_bits]
    return min(with_w, key=lambda c: (abs(c.a_bits - a_star), -c.a_bits))


def ratio(table: QuantErrorTable, group: QuantizerGroup, w_bits: int) -> float:
    """QE(b) / QE(baseline): 0 when both are 0, inf when only the baseline is 0."""
    widths = weight_widths(group)
    base = BASELINE_BITS if BASELINE_BITS in widths else widths[0]
    qe, qe_base = table.of(group.id, w_bits), table.of(group.id, base)
    if qe_base == 0:
        return 0.0 if qe == 0 else math.inf
    return qe / qe_base


def width_for(table: QuantErrorTable, group: QuantizerGroup, qem: float) -> int:
    """The lowest allowed weight width with QE(b) <= QEM * QE(baseline) (the baseline if none)."""
    fitting = [b for b in weight_widths(group) if ratio(table, group, b) <= qem]
    widths = weight_widths(group)
    return min(fitting) if fitting else (BASELINE_BITS if BASELINE_BITS in widths else widths[0])


def configuration(space: SearchSpace, qem: float) -> Plan:
    """MixQuant's plan for one multiplier."""
    table = _errors(space)
    return Plan({
        g.id: kernel_for(g, width_for(table, g, qem)) if weight_widths(g) else g.highest for g in space.groups
    })


def breakpoints(space: SearchSpace) -> tuple[float, ...]:
    """Every QEM at which some group's width changes, ascending, starting at 1 (the baseline)."""
    table = _errors(space)
    ratios = {1.0}
    for group in space.groups:
        ratios.update(r for b in weight_widths(group) if math.isfinite(r := ratio(table, group, b)) and r >= 1.0)
    return tuple(sorted(ratios))


def qem_for_budget(space: SearchSpace, target_bops: float) -> float:
    """The smallest QEM whose configuration costs at most `target_bops` (the largest if none).

    Relative BOPs fall monotonically as QEM grows (each group's width only falls), so the
    bisection over the breakpoints finds the point at or just below the budget.
    """
    qems = breakpoints(space)
    index = bisect.bisect_left(
        range(len(qems)), True, key=lambda i: space.relative_bops(configuration(space, qems[i])) <= target_bops + 1e-12
    )
    return qems[min(index, len(qems) - 1)]


def pareto_curve(space: SearchSpace, options: StrategyOptions) -> ParetoCurve:
    """One point for `options.qem`; otherwise the whole sweep (the budget's point is on it)."""
    if options.qem is not None:
        return curve_of(space, [configuration(space, options.qem)])
    qems = list(breakpoints(space))
    if options.target_bops is not None:
        qems.append(qem_for_budget(space, options.target_bops))
    return curve_of(space, [configuration(space, q) for q in sorted(qems)])


def _errors(space: SearchSpace) -> QuantErrorTable:
    if space.quant_errors is None:
        raise ValueError("MixQuant needs the quantization-error table (SearchSpace.quant_errors)")
    return space.quant_errors
