"""The records a run passes between its steps: settings, budget, prepared model, outcome, result.

Why: `pipeline` orders the steps, `report`/`report_html` describe what they produced, and the
CLI builds settings; all of them name these records, so the records live apart from the
steps (no `report -> pipeline` import). Each is frozen and built whole by the step that
returns it.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from onnxmp.calib_data import CalibrationSet
from onnxmp.errors import BudgetError
from onnxmp.graph import DataflowGraph
from onnxmp.hw_profile import ActivationClipping, HwProfile, WeightRounding
from onnxmp.latency_spec import CostAxis
from onnxmp.records import (
    Candidate,
    ExecutorKind,
    GroupAnalysis,
    ParetoCurve,
    ParetoPoint,
    Plan,
    RangeMethod,
    SearchMethod,
    Selection,
    SensitivityTable,
    Strategy,
    TensorEncoding,
)


class AdaRoundInputs(enum.Enum):
    """Which layer inputs AdaRound reconstructs the float layer output from."""

    FLOAT = "float"  # the float network's inputs to the layer
    QUANTIZED = "quantized"  # the quantized network's (AIMET style), against the float output


@dataclass(frozen=True)
class Settings:
    """How a run measures and writes. Range method and batch size are part of the phase-1
    store key; the executor is not (every executor gives identical results). `workers=None`
    lets `executors.executor_for` pick (one worker per 4 cores). `require_stored` is the
    `search` command's mode: phase 1 must already be in the store. `verify` runs the ONNX
    checker after every pass. `strict` refuses a model with nothing to quantize. `qem`
    (MixQuant) and `lam` (AdaQAT) fix the strategy's knob to one point; `per_network` and
    `measured_loss` choose AdaQAT's mode (one width pair for the network; task loss measured
    with ONNX Runtime instead of predicted from phase 1)."""

    range_method: RangeMethod = RangeMethod.MSE
    batch_size: int = 16
    seed: int = 0
    strategy: Strategy = Strategy.GREEDY
    search: SearchMethod = SearchMethod.HYBRID
    executor: ExecutorKind = ExecutorKind.PROCESSES
    workers: int | None = None
    ray_address: str | None = None
    encodings_version: str = "1.0.0"
    require_stored: bool = False
    verify: bool = False
    strict: bool = False
    qem: float | None = None
    lam: float | None = None
    per_network: bool = False
    measured_loss: bool = False
    cost: CostAxis = CostAxis.BOPS  # the curve's cost axis for min_sqnr / max_drop (latency: the profile's model)
    amed_samples: int = 2000

    @property
    def fixes_point(self) -> bool:
        """Whether --qem or --lam picks the one point (then no budget is needed)."""
        return (self.strategy is Strategy.MIXQUANT and self.qem is not None) or (
            self.strategy is Strategy.ADAQAT and self.lam is not None
        )

    @property
    def curve_label(self) -> str:
        """The name of this run's curve among the store's curves (strategy and mode)."""
        if self.strategy is not Strategy.ADAQAT:
            return self.strategy.value
        modes = ["network" if self.per_network else "group", "measured" if self.measured_loss else "predicted"]
        return f"adaqat ({', '.join(modes)})"
    weight_rounding: WeightRounding | None = None  # None: the profile's (schemes.weights.rounding)
    activation_clipping: ActivationClipping | None = None  # None: the profile's (schemes.activations.clipping)
    bias_correction: bool | None = None  # None: the profile's (schemes.weights.bias_correction)
    output_range: bool = False  # weight scales chosen by the layer-output error (README "Bias correction")
    refine_rounding: bool = True  # AdaRound the chosen plan again on its own network (README "AdaRound")


@dataclass(frozen=True)
class Budget:
    """Exactly one of: fixed `bits`, `target_bops`, `min_sqnr_db`, `max_drop` (needs evaluate),
    or `target_latency_ms` (needs a profile with a latency model)."""

    bits: Candidate | None = None
    target_bops: float | None = None
    min_sqnr_db: float | None = None
    max_drop: float | None = None
    target_latency_ms: float | None = None

    def check(self, has_evaluate: bool, *, fixed_point: bool = False) -> None:
        """Raise BudgetError unless exactly one budget is given (and max_drop has an evaluation);
        with `fixed_point` (--qem, --lam) the budget may be absent."""
        chosen = [v for v in (self.bits, self.target_bops, self.min_sqnr_db, self.max_drop, self.target_latency_ms) if v is not None]
        if len(chosen) != 1 and not (fixed_point and not chosen):
            raise BudgetError("give exactly one budget: bits, target_bops, min_sqnr_db, max_drop or target_latency_ms")
        numbers = {"target BOPs": self.target_bops, "minimum SQNR": self.min_sqnr_db, "maximum drop": self.max_drop,
                   "target latency": self.target_latency_ms}
        for name, value in numbers.items():
            if value is not None and value != value:  # NaN compares unequal to itself
                raise BudgetError(f"{name} nan is not a number")
        if self.max_drop is not None and not has_evaluate:
            raise BudgetError("max_drop needs an evaluation function")


@dataclass(frozen=True)
class Prepared:
    """The canonical model and every analysis the search needs."""

    original: onnx.ModelProto  # weightless: its tensor names name the encodings; weights live in `model`
    model: onnx.ModelProto
    graph: DataflowGraph
    analysis: GroupAnalysis
    macs: Mapping[str, int]
    group_bops: Mapping[str, Mapping[Candidate, int]]
    reference_bops: int
    profile: HwProfile
    fingerprints: Mapping[str, str]


@dataclass(frozen=True)
class Calibrated:
    """A prepared model with its ranges, its calibration inputs and the float outputs over
    them (computed once per run): what every measurement of the run reads."""

    prepared: Prepared
    encodings: Mapping[tuple[str, int], TensorEncoding]
    calib: CalibrationSet
    reference: Mapping[str, Sequence[np.ndarray]]  # float outputs, one array per run
    timings: Mapping[str, float] = field(default_factory=dict)  # prepare_s, calibrate_s, adaround_s
    # (weight, bits) -> AdaRounded integers; every configuration stitches in its own widths
    rounded: Mapping[tuple[str, int], np.ndarray] = field(default_factory=dict)
    # (weight, bits) -> the corrected bias of its layer (bias correction), stitched the same way
    biases: Mapping[tuple[str, int], np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class Decision:
    """What a run chose and how: the plan and its point, the curve (with what was measured),
    the phase-1 table and the selection (both None for a homogeneous run), the timings,
    for a max_drop run the float model's score, and the curves of every strategy run on the
    same store (label -> curve, this run's included)."""

    plan: Plan
    point: ParetoPoint
    curve: ParetoCurve
    selection: Selection | None = None
    table: SensitivityTable | None = None
    timings: Mapping[str, float] = field(default_factory=dict)
    float_score: float | None = None
    curves: Mapping[str, ParetoCurve] = field(default_factory=dict)
    # the same strategy's table and curve with plain weights (nearest rounding, no bias correction),
    # when a plain run left them in the same store: what the report overlays
    plain_table: SensitivityTable | None = None
    plain_curve: ParetoCurve = ()
    # the chosen plan's measured SQNR with its weights AdaRounded on its own network (`plan_rounding`);
    # the written model carries those weights when this beats point.measured_sqnr_db
    refined_sqnr_db: float | None = None


@dataclass(frozen=True)
class Result:
    """What a run produced: the chosen plan and point, the curve, and the files written."""

    plan: Plan
    point: ParetoPoint
    curve: ParetoCurve
    selection: Selection | None
    sensitivity: SensitivityTable | None
    paths: Mapping[str, Path]
    timings: Mapping[str, float] = field(default_factory=dict)
    float_score: float | None = None  # evaluate(float model), for max_drop runs
    refined_sqnr_db: float | None = None  # Decision.refined_sqnr_db

    @staticmethod
    def of(decision: Decision, paths: Mapping[str, Path]) -> Result:
        return Result(
            decision.plan, decision.point, decision.curve, decision.selection, decision.table, paths,
            decision.timings, decision.float_score, decision.refined_sqnr_db,
        )


def homogeneous_plan(analysis: GroupAnalysis, bits: Candidate, profile: HwProfile) -> Plan:
    """Every group at `bits` (weightless groups at its activation width, or the next wider
    one when their ops have only wider kernels, as an A16-only Softmax in a W8A8 plan).

    Raises:
        BudgetError: `bits` is not a kernel of the profile, or some group cannot take it.
    """
    if bits not in profile.kernels:
        allowed = ", ".join(str(k) for k in profile.kernels)
        raise BudgetError(f"{bits} is not a kernel of profile {profile.name} (kernels: {allowed})")
    choices = {}
    for group in analysis.groups:
        wanted = bits if group.weights else Candidate(None, bits.a_bits)
        if not group.weights and wanted not in group.candidates:
            # an op with activation-only kernels (an A16 Softmax) runs at its narrowest width above
            wider = [c for c in group.candidates if c.a_bits > bits.a_bits]
            wanted = wider[-1] if wider else wanted
        if wanted not in group.candidates:
            raise BudgetError(f"group {group.id} cannot run at {bits} (allowed: {', '.join(map(str, group.candidates))})")
        choices[group.id] = wanted
    return Plan(choices)
