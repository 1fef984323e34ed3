"""Output-aware activation clipping: each activation's range chosen by the network output.

Why: the MSE range minimizes the error of the tensor itself, every element alike. A
transformer's residual branches carry a few huge outlier channels (all-MiniLM-L6-v2's FFN
outputs reach 196 where the bulk lies within a few units): the MSE range keeps the outliers,
pays for them with a coarse step everywhere, while the network output cares less about them
(presumably the LayerNorm after the residual Add divides them away). Measured at the
network output, a tighter range is better there, and W8A8's Spearman follows (80.36 -> 81.70, README "Transformers").
Phase 1 already measures one quantizer alone at the output; this reuses it.

Rule cases:
1. Candidates are the tensor-MSE range scaled by CLIP_FACTORS (1.0 = the MSE range itself).
   Scaling keeps the zero point, so every candidate is the old range times the factor exactly.
2. Only activations at <= MAX_BITS bits: at 16 bits the rounding step is 256 times finer and
   the MSE range is already within the noise of the measurement.
3. Each (tensor, bits, factor) is measured like a phase-1 candidate: that tensor alone
   quantized, everything else float; the factor with the highest output SQNR wins, ties going
   to the wider range (the earlier factor). Results are appended to the run's store under
   their own kind, so an interrupted run resumes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace

from onnxmp.phase1.executors import Placement
from onnxmp.phase1.sensitivity import Phase1Context, Progress, sensitivity
from onnxmp.records import (
    Candidate,
    GroupAnalysis,
    QuantizerGroup,
    SensitivityTable,
    TensorEncoding,
)
from onnxmp.store import ResultStore

logger = logging.getLogger(__name__)

STORE_KIND = "clipping"
CLIP_FACTORS = (1.0, 0.7, 0.5, 0.35, 0.25, 0.18)
MAX_BITS = 8

Encodings = Mapping[tuple[str, int], TensorEncoding]


def scaled(encoding: TensorEncoding, factor: float) -> TensorEncoding:
    """`encoding` with its range times `factor`: same zero point, scale times `factor`.

    >>> from onnxmp.records import Grid
    >>> e = TensorEncoding("x", 8, (0.5,), (10,), Grid.ASYMMETRIC_UNSIGNED)
    >>> scaled(e, 0.5).scale, scaled(e, 0.5).zero_point
    ((0.25,), (10,))
    """
    return replace(encoding, scale=tuple(float(s) * factor for s in encoding.scale))


def clipped_tensors(context: Phase1Context, constants: frozenset[str]) -> list[tuple[str, int]]:
    """The (activation, bits) pairs clipping is searched for, in a stable order."""
    return sorted((t, b) for (t, b) in context.encodings if b <= MAX_BITS and t not in constants)


def clip_activations(
    context: Phase1Context,
    constants: frozenset[str],
    *,
    store: ResultStore,
    placement: Placement = Placement(),
    progress: Progress | None = None,
) -> dict[tuple[str, int], TensorEncoding]:
    """`context.encodings` with every activation at <= MAX_BITS bits clipped by the factor
    that gives the best network-output SQNR with that activation alone quantized.

    `constants` names the weights (their encodings are left alone).
    """
    pairs = clipped_tensors(context, constants)
    if not pairs:
        return dict(context.encodings)
    tables = {factor: _measure(context, pairs, factor, store, placement, progress) for factor in CLIP_FACTORS}
    chosen = dict(context.encodings)
    for tensor, bits in pairs:
        sqnr = {f: tables[f].of(_group_id(tensor, f), Candidate(None, bits)) for f in CLIP_FACTORS}
        best = max(CLIP_FACTORS, key=lambda f: (sqnr[f], -CLIP_FACTORS.index(f)))  # ties: the wider range
        chosen[(tensor, bits)] = scaled(context.encodings[(tensor, bits)], best)
        if best != 1.0:
            logger.info("clip %s @ %d bits: x%g (%.2f -> %.2f dB alone)", tensor, bits, best, sqnr[1.0], sqnr[best])
    return chosen


def _group_id(tensor: str, factor: float) -> str:
    return f"{tensor} x{factor:g}"


def _measure(
    context: Phase1Context, pairs: list[tuple[str, int]], factor: float, store: ResultStore,
    placement: Placement, progress: Progress | None,
) -> SensitivityTable:
    """Output SQNR of each activation alone at its bits, its range times `factor`."""
    bits_of: dict[str, list[int]] = {}
    for tensor, bits in pairs:
        bits_of.setdefault(tensor, []).append(bits)
    groups = tuple(
        QuantizerGroup(_group_id(t, factor), (), (t,), (), tuple(Candidate(None, b) for b in sorted(bs, reverse=True)))
        for t, bs in bits_of.items()
    )
    encodings = {**context.encodings, **{(t, b): scaled(context.encodings[(t, b)], factor) for t, b in pairs}}
    analysis = GroupAnalysis(groups, (), context.analysis.anchors)
    single = replace(context, analysis=analysis, encodings=encodings, rounded={})
    return sensitivity(single, store=store, placement=placement, progress=progress, kind=STORE_KIND)
