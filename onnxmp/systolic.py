"""Per-layer latency of a systolic-array accelerator: compute cycles, memory cycles, max of both.

Why: AMED (Kimhi et al. 2024, §4.4) costs a bit allocation on a simulated systolic array,
where SRAM sizes and DRAM bandwidth make a layer memory-bound or compute-bound; BOPs see
neither. This is SCALE-Sim's analytical model (Samajdar et al. 2020) in numpy, with
bit-widths entering through the bits each operand moves.

Rule cases (a layer is a GEMM: ifmap [M x K] times filter [K x N] gives ofmap [M x N]; a
Conv has M = output pixels, N = filters, K = window = C/groups * kh * kw):
1. The dataflow maps two GEMM dimensions onto the array (rows x cols) and streams the
   third (T): os -> (M, N; T = K), ws -> (K, N; T = M), is -> (K, M; T = N). A ws or is
   fold takes 2*rows + cols + T - 2 cycles (load the stationary operand, stream, drain);
   an os fold rows + cols + T - 2 (both operands stream in from the edges, nothing is
   preloaded); folds = ceil(S_R/rows) * ceil(S_C/cols). These are the cycles SCALE-Sim
   3.0.0 itself reports (its demand matrices; bench/scalesim_check.py), not the paper's
   2*S_R + S_C + T - 2 for os. Compute cycles do not depend on bit-width (a fixed array).
2. An operand fits its SRAM when its bits fit half of it (double buffering keeps the other
   half loading). One that fits crosses DRAM once; one that does not is fetched again for
   every fold that re-reads it: os re-reads ifmap per column fold and filter per row fold;
   ws re-reads ifmap per column fold and spills partial sums (ofmap) per row fold; is
   re-reads filter per column fold and spills partial sums per row fold.
3. Memory cycles of an operand = its DRAM bits / (bandwidth_words * word_bits): a b-bit
   operand moves b/word_bits of the words a word-wide operand moves (AMED: word size 16).
4. Layer cycles = max(compute, ifmap, filter, ofmap memory cycles): double buffering
   overlaps transfers with compute (AMED: "the maximum latency value ... for each layer").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from onnxmp.latency_spec import Dataflow, SystolicSpec

FLOAT_BITS = 32  # an operand no quantizer narrows travels as float32


@dataclass(frozen=True)
class GemmShape:
    """One layer as a GEMM, and the elements of each operand in memory (batch 1)."""

    m: int  # output rows (ofmap pixels)
    n: int  # output columns (filters)
    k: int  # reduction (window)
    ifmap_elems: int
    filter_elems: int
    ofmap_elems: int


@dataclass(frozen=True)
class OperandBits:
    """Bit-width each operand of a layer is stored and moved at."""

    ifmap: int
    filter: int
    ofmap: int


@dataclass(frozen=True)
class LayerCycles:
    """Cycles of one layer at one set of operand widths; `cycles` is the max of the four."""

    compute: int
    ifmap: float
    filter: float
    ofmap: float

    @property
    def cycles(self) -> float:
        return max(self.compute, self.ifmap, self.filter, self.ofmap)

    @property
    def memory_bound(self) -> bool:
        return self.cycles > self.compute


def mapping(shape: GemmShape, dataflow: Dataflow) -> tuple[int, int, int]:
    """(S_R, S_C, T): the GEMM dimensions on array rows, on array columns, and streamed."""
    if dataflow is Dataflow.OUTPUT_STATIONARY:
        return shape.m, shape.n, shape.k
    if dataflow is Dataflow.WEIGHT_STATIONARY:
        return shape.k, shape.n, shape.m
    return shape.k, shape.m, shape.n


def compute_cycles(shape: GemmShape, spec: SystolicSpec) -> int:
    """Folds x (rows + cols + T - 2) for os, folds x (2*rows + cols + T - 2) for ws and is.

    >>> from onnxmp.latency_spec import SystolicSpec, Dataflow
    >>> spec = SystolicSpec(4, 4, Dataflow.OUTPUT_STATIONARY, 1, 1, 1, 1, 1.0)
    >>> compute_cycles(GemmShape(m=6, n=4, k=9, ifmap_elems=0, filter_elems=0, ofmap_elems=0), spec)
    30
    """
    s_r, s_c, t = mapping(shape, spec.dataflow)
    folds = math.ceil(s_r / spec.rows) * math.ceil(s_c / spec.cols)
    preload = 0 if spec.dataflow is Dataflow.OUTPUT_STATIONARY else spec.rows
    return folds * (preload + spec.rows + spec.cols + t - 2)


def dram_bits(shape: GemmShape, bits: OperandBits, spec: SystolicSpec) -> tuple[int, int, int]:
    """Bits each operand moves between DRAM and its SRAM (rule 2)."""
    ifmap, filt, ofmap = shape.ifmap_elems * bits.ifmap, shape.filter_elems * bits.filter, shape.ofmap_elems * bits.ofmap
    fits = [b <= kb * 1024 * 8 / 2 for b, kb in (
        (ifmap, spec.ifmap_sram_kb), (filt, spec.filter_sram_kb), (ofmap, spec.ofmap_sram_kb))]
    s_r, s_c, _ = mapping(shape, spec.dataflow)
    row_folds, col_folds = math.ceil(s_r / spec.rows), math.ceil(s_c / spec.cols)
    if spec.dataflow is Dataflow.OUTPUT_STATIONARY:
        reads = (1 if fits[0] else col_folds, 1 if fits[1] else row_folds, 1)
    elif spec.dataflow is Dataflow.WEIGHT_STATIONARY:
        reads = (1 if fits[0] else col_folds, 1, 1 if fits[2] else 2 * row_folds - 1)
    else:
        reads = (1, 1 if fits[1] else col_folds, 1 if fits[2] else 2 * row_folds - 1)
    return ifmap * reads[0], filt * reads[1], ofmap * reads[2]


def layer_cycles(shape: GemmShape, bits: OperandBits, spec: SystolicSpec) -> LayerCycles:
    """Compute and per-operand memory cycles of one layer (rules 1-4)."""
    port = spec.bandwidth_words * spec.word_bits
    ifmap, filt, ofmap = dram_bits(shape, bits, spec)
    return LayerCycles(compute_cycles(shape, spec), ifmap / port, filt / port, ofmap / port)


def seconds(cycles: float, spec: SystolicSpec) -> float:
    return cycles / (spec.clock_ghz * 1e9)
