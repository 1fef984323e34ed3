"""The six steps in order: load+canonicalize, groups, calibrate, phase 1, phase 2+select, emit.

Why: this is the only module that knows the order of the stages; it holds no graph logic of
its own. Each step takes records and returns records (onnxmp.run_records).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType

import onnx

from onnxmp import curves, latency_check, output_folder
from onnxmp.calib_data import CalibrationSet
from onnxmp.emit import emit
from onnxmp.errors import BudgetError, ModelError
from onnxmp.float_candidate import table_with_float, with_float
from onnxmp.hw_profile import ActivationClipping, HwProfile
from onnxmp.inputs import load_inputs
from onnxmp.latency_spec import CostAxis
from onnxmp.phase1.clip_activations import clip_activations
from onnxmp.phase1.executors import executor_for
from onnxmp.phase1.run_table import phase1_table
from onnxmp.phase1.sensitivity import Phase1Context, Progress
from onnxmp.plan_rounding import refine
from onnxmp.records import (
    Candidate,
    ParetoCurve,
    Plan,
    Selection,
    SelectionMethod,
    Strategy,
    noise_ratio,
)
from onnxmp.run_records import Budget, Calibrated, Decision, Result, Settings, homogeneous_plan
from onnxmp.run_store import open_store, plain_phase1
from onnxmp.search import (
    STRATEGIES,
    SearchSpace,
    StrategyOptions,
    check_selection,
    mixquant,
    select_best,
    select_by_bops,
    select_by_latency,
    select_by_target,
)
from onnxmp.steps import (
    ADAROUND,
    ADAROUND_HOMOGENEOUS,
    activation_clipping,
    adaround,
    calibrate_ranges,
    homogeneous,
    measured_sqnr,
    prepare,
    simulate,
)
from onnxmp.store import ResultStore

logger = logging.getLogger(__name__)

Evaluate = Callable[[onnx.ModelProto], float]


def search_point(
    calibrated: Calibrated,
    budget: Budget,
    *,
    settings: Settings,
    store: ResultStore,
    evaluate: Evaluate | None = None,
    progress: Progress | None = None,
) -> Decision:
    """Phase 1 (resumable, when the strategy needs it), the strategy's curve, and the selection."""
    timings = dict(calibrated.timings)
    start = time.perf_counter()
    table = phase1_table(calibrated, settings, store, progress)
    timings["phase1_s"] = time.perf_counter() - start
    start = time.perf_counter()
    options = StrategyOptions(
        budget.target_bops, settings.qem, settings.lam, settings.per_network, settings.measured_loss, settings.seed,
        budget.target_latency_ms, settings.cost is CostAxis.LATENCY, settings.amed_samples,
    )
    space = _space(calibrated, settings, store, table, latency_check.latency_of(calibrated, store))
    curve = STRATEGIES[settings.strategy](space, options)
    timings["phase2_s"] = time.perf_counter() - start
    start = time.perf_counter()
    chosen = _select(calibrated, curve, budget, settings=settings, evaluate=evaluate, check=_latency_check(calibrated, budget, space))
    timings["search_s"] = time.perf_counter() - start
    curves.save_curve(store, settings.curve_label, chosen.curve)
    others = {k: v for k, v in curves.stored_curves(store, space.table).items() if k != settings.curve_label}
    point = chosen.selection.point
    return Decision(
        point.plan, point, chosen.curve, chosen.selection, space.table, timings, chosen.float_score,
        {settings.curve_label: chosen.curve, **others}, *plain_phase1(calibrated.prepared, settings, store),
    )


def _space(calibrated: Calibrated, settings: Settings, store: ResultStore, table, latency) -> SearchSpace:
    """What the strategy reads: the table, MixQuant's weight errors, a store-backed measurement.
    With a profile listing `float`, greedy and AMED may leave groups float (+inf dB)."""
    prepared = calibrated.prepared
    groups = prepared.analysis.groups
    if prepared.profile.float_groups and table is not None and settings.strategy in (Strategy.GREEDY, Strategy.AMED):
        groups, table = with_float(prepared.analysis).groups, table_with_float(table, prepared.analysis)
    errors = None
    if settings.strategy is Strategy.MIXQUANT:
        weights = {w: prepared.graph.constant(w) for g in groups for w in g.weights}
        errors = mixquant.quantization_errors(groups, weights, calibrated.encodings)
    sqnr_of = curves.stored_measure(store, lambda plan: measured_sqnr(calibrated, plan, settings.batch_size))
    return SearchSpace(
        groups, prepared.group_bops, prepared.reference_bops, table, errors, lambda plan: noise_ratio(sqnr_of(plan)),
        latency,
    )


@dataclass(frozen=True)
class _Chosen:
    curve: ParetoCurve  # with the measured SQNR / accuracy of every point the search measured
    selection: Selection
    float_score: float | None


def _select(
    calibrated: Calibrated, curve: ParetoCurve, budget: Budget, *, settings: Settings, evaluate: Evaluate | None,
    check: Callable | None = None,
) -> _Chosen:
    """Pick the point for `budget`; measure its true SQNR (and accuracy where evaluated).
    `check(curve, selection, meets=...)` (the `ort` model's, `_latency_check`) may re-pick by
    measured latency; `meets(plan)` says whether a plan meets the quality target."""
    measured: dict[Plan, float] = {}
    scores: dict[Plan, float] = {}
    float_score = None

    def sqnr_of(plan: Plan) -> float:
        if plan not in measured:
            measured[plan] = measured_sqnr(calibrated, plan, settings.batch_size)
        return measured[plan]

    def score_of(plan: Plan) -> float:
        assert evaluate is not None  # Budget.check: max_drop comes with an evaluation
        if plan not in scores:
            scores[plan] = evaluate(simulate(calibrated.prepared, plan, calibrated.encodings, calibrated.rounded, calibrated.biases))
        return scores[plan]

    quality: Callable[[Plan], float] | None = None
    threshold = 0.0  # with `quality`: the target it must meet
    if budget.target_bops is not None:
        selection = select_by_bops(curve, budget.target_bops)
    elif budget.target_latency_ms is not None and settings.strategy is Strategy.AMED:
        selection = select_best(curve, lambda i: sqnr_of(curve[i].plan))  # AMED's best samples, all within the budget
    elif budget.target_latency_ms is not None:
        selection = select_by_latency(curve, budget.target_latency_ms)
    elif budget.min_sqnr_db is not None:
        quality, threshold = sqnr_of, budget.min_sqnr_db
    elif budget.max_drop is None:  # --qem / --lam: the strategy's one point
        selection = Selection(curve[0], 0, 0, SelectionMethod.FIXED)
    else:
        assert evaluate is not None
        float_score = evaluate(calibrated.prepared.model)
        quality, threshold = score_of, float_score - budget.max_drop
    if quality is not None:
        what = "accuracy" if budget.min_sqnr_db is None else "SQNR (dB)"
        selection = select_by_target(curve, lambda i: quality(curve[i].plan), threshold, method=settings.search, what=what)
    if check is not None:
        curve, selection = check(curve, selection, meets=None if quality is None else lambda plan: quality(plan) >= threshold)
    sqnr_of(selection.point.plan)
    curve = tuple(replace(p, measured_sqnr_db=measured.get(p.plan), accuracy=scores.get(p.plan)) for p in curve)
    return _Chosen(curve, replace(selection, point=curve[selection.index]), float_score)


def _latency_check(calibrated: Calibrated, budget: Budget, space: SearchSpace) -> Callable | None:
    """With the `ort` latency model, the selection's check on this machine (search.select_measured)."""
    spec = latency_check.ort_spec(calibrated)
    if spec is None:
        return None
    return functools.partial(check_selection, measure=latency_check.measure_plan(calibrated, spec), budget_ms=budget.target_latency_ms,
                             homogeneous=lambda: latency_check.homogeneous_points(calibrated, space.table, space.latency))


def clip(calibrated: Calibrated, settings: Settings, output_dir: Path, progress: Progress | None = None) -> Calibrated:
    """`calibrated` with ranges tightened at the network output (clipping `output`); kept in the phase-1 store."""
    prepared = calibrated.prepared
    if activation_clipping(prepared, settings) is ActivationClipping.TENSOR:
        return calibrated
    start = time.perf_counter()
    context = Phase1Context(
        prepared.model, prepared.analysis, calibrated.encodings, calibrated.calib, calibrated.reference,
        settings.batch_size, prepared.profile.quantize_bias,
    )
    encodings = clip_activations(
        context, frozenset(prepared.graph.constants), store=open_store(output_dir, prepared, settings),
        placement=executor_for(settings.executor, settings.workers, settings.ray_address), progress=progress,
    )
    timings = {**calibrated.timings, "clip_s": time.perf_counter() - start}
    return replace(calibrated, encodings=MappingProxyType(encodings), timings=timings)


def decide(
    calibrated: Calibrated,
    budget: Budget,
    *,
    settings: Settings,
    output_dir: Path,
    evaluate: Evaluate | None = None,
    progress: Progress | None = None,
) -> Decision:
    """The homogeneous configuration for `budget.bits`, else phase 1 + phase 2 + selection."""
    if budget.bits is not None:
        return homogeneous(calibrated, budget.bits, settings)
    store = open_store(output_dir, calibrated.prepared, settings)
    return search_point(calibrated, budget, settings=settings, store=store, evaluate=evaluate, progress=progress)


def quantize(
    model: str | Path | onnx.ModelProto,
    *,
    profile: str | Path | HwProfile,
    calib: str | Path | Mapping | CalibrationSet,
    output_dir: str | Path,
    bits: str | Candidate | None = None,
    target_bops: float | None = None,
    min_sqnr_db: float | None = None,
    max_drop: float | None = None,
    target_latency_ms: float | None = None,
    evaluate: Evaluate | None = None,
    settings: Settings = Settings(),
    progress: Progress | None = None,
    encodings_version: str | None = None,
    require_stored: bool | None = None,
    verify: bool | None = None,
) -> Result:
    """Quantize `model` for `profile` and write the QDQ model, plan, curve and report.

    The public entry point (`onnxmp.quantize`): convenient keyword arguments, turned into
    records here. Exactly one budget: `bits` (homogeneous, e.g. "W8A8"), `target_bops`
    (relative to W8A16 everywhere), `min_sqnr_db` (measured output SQNR on the calibration
    data), `max_drop` (points of `evaluate(model)` below the float model's score), or
    `target_latency_ms` (batch-1 latency from the profile's latency model).
    `encodings_version`, `require_stored` and `verify`, when given, override those fields
    of `settings`.

    Raises:
        OnnxmpError: bad model, profile, calibration data or budget (one-line message).
    """
    budget = Budget(_parse_bits(bits) if isinstance(bits, str) else bits, target_bops, min_sqnr_db, max_drop, target_latency_ms)
    overrides = {"encodings_version": encodings_version, "require_stored": require_stored, "verify": verify}
    settings = replace(settings, **{k: v for k, v in overrides.items() if v is not None})
    budget.check(evaluate is not None, fixed_point=settings.fixes_point)
    start = time.perf_counter()
    model, loaded_profile, calib_set = load_inputs(model, profile, calib)
    with output_folder.locked(Path(output_dir)) as folder:  # one run at a time per folder
        prepared = prepare(model, loaded_profile, calib_set, verify=settings.verify)
        if settings.strict and not prepared.analysis.groups:
            raise ModelError(f"nothing to quantize on profile {loaded_profile.name} (--strict): no op has a kernel")
        del model  # a model loaded here lives on in prepared.model only
        calibrated = calibrate_ranges(prepared, calib_set, settings, prepare_s=time.perf_counter() - start, bits=budget.bits)
        calibrated = clip(calibrated, settings, folder, _step(progress, "clipping"))
        fixed = None if budget.bits is None else homogeneous_plan(prepared.analysis, budget.bits, prepared.profile)
        calibrated = adaround(calibrated, settings, folder, options=ADAROUND if fixed is None else ADAROUND_HOMOGENEOUS,
                              plan=fixed, progress=_step(progress, "adaround"))
        decision = decide(calibrated, budget, settings=settings, output_dir=folder, evaluate=evaluate,
                          progress=_step(progress, "phase 1"))
        calibrated, decision = refine(calibrated, decision, settings, folder, _step(progress, "adaround (chosen plan)"))
        return emit(calibrated, decision, folder, settings=settings)


def _step(progress: Progress | None, name: str) -> Progress | None:
    """`progress` with each item prefixed by the step's name (the terminal shows which step runs)."""
    return None if progress is None else lambda done, total, what: progress(done, total, f"{name}: {what}")


def _parse_bits(text: str) -> Candidate:
    try:
        return Candidate.parse(text)
    except ValueError as e:
        raise BudgetError(f"bits: {e}") from e
