"""The six steps in order: load+canonicalize, groups, calibrate, phase 1, phase 2+select, emit.

Why: this is the only module that knows the order of the stages; it holds no graph logic of
its own. Each step takes records and returns records.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path

import onnx

from onnxmp import bops, graph, model_io, runtime
from onnxmp import encodings as encodings_format
from onnxmp.calib_data import CalibrationSet
from onnxmp.errors import BudgetError, ModelError, OnnxmpError, PassError
from onnxmp.hw_profile import HwProfile
from onnxmp.inputs import load_inputs
from onnxmp.passes import CANONICALIZE
from onnxmp.passes.calibrate import calibrate
from onnxmp.passes.insert_qdq import (
    WeightStorage,
    insert_qdq,
    insert_quantizers,
    quantizers_for,
)
from onnxmp.passes.quantizer_groups import quantizer_groups
from onnxmp.phase1.executors import executor_for
from onnxmp.phase1.sensitivity import STORE_KIND, measure, reference_outputs, sensitivity
from onnxmp.records import (
    Candidate,
    GroupAnalysis,
    ParetoCurve,
    ParetoPoint,
    Plan,
    SensitivityTable,
    TensorEncoding,
)
from onnxmp.run_records import Budget, Prepared, Result, SearchOutcome, Settings, homogeneous_plan
from onnxmp.search import STRATEGIES, select_by_bops, select_by_target
from onnxmp.search.greedy import predicted_sqnr_db
from onnxmp.store import ResultStore, run_key

logger = logging.getLogger(__name__)

Evaluate = Callable[[onnx.ModelProto], float]
STORE_NAME = "phase1.jsonl"


def run_passes(model: onnx.ModelProto, passes, *, verify: bool = False) -> onnx.ModelProto:
    """Run passes in order; a failing pass becomes a PassError naming it."""
    for run in passes:
        before = len(model.graph.node)
        try:
            model = run(model)
        except OnnxmpError:
            raise
        except Exception as e:  # a bug in a pass: name it, keep the cause
            raise PassError(f"pass {run.__name__} failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
        if verify:  # a weightless check for large models: the checker serializes what it gets
            try:
                model_io.validate(model, f"after pass {run.__name__}")
            except ModelError as e:
                raise PassError(str(e)) from e
        logger.info("%s: %d -> %d nodes", run.__name__, before, len(model.graph.node))
    return model


def prepare(model: onnx.ModelProto, profile: HwProfile, calib: CalibrationSet, *, verify: bool = False) -> Prepared:
    """Canonicalize, index, derive groups, count MACs and BOPs."""
    canonical = run_passes(model, CANONICALIZE, verify=verify)
    index = graph.build(canonical)
    analysis = quantizer_groups(index, profile)
    sample_shapes = {name: arr.shape for name, arr in calib.arrays.items()}
    macs = bops.macs_per_op(bops.concrete_graph(canonical, sample_shapes))
    return Prepared(
        original=model_io.weightless(model, model_io.weights(model, min_bytes=0)),
        model=canonical,
        graph=index,
        analysis=analysis,
        macs=macs,
        group_bops=bops.group_bops(index, analysis, macs),
        reference_bops=bops.reference_bops(index, analysis, macs),
        profile=profile,
        fingerprints={
            "model": model_io.fingerprint(model),
            "profile": profile.fingerprint,
            "calibration": calib.fingerprint(),
        },
    )


def point_of(plan: Plan, prepared: Prepared, table: SensitivityTable | None) -> ParetoPoint:
    """The curve record of any plan: relative BOPs and (with a table) predicted SQNR."""
    rel = bops.relative_bops(plan, prepared.group_bops, prepared.reference_bops)
    predicted = predicted_sqnr_db(plan, table) if table is not None else float("nan")
    return ParetoPoint(rel, predicted, plan)


def simulate(prepared: Prepared, plan: Plan, encodings) -> onnx.ModelProto:
    """The QDQ model of `plan` as phase 1 measures it (fake-quantized float weights)."""
    return insert_qdq(
        prepared.model, analysis=prepared.analysis, plan=plan, encodings=encodings,
        weights=WeightStorage.FAKE_FLOAT, quantize_bias=prepared.profile.quantize_bias,
    )


def measured_sqnr(prepared: Prepared, plan: Plan, encodings, calib: CalibrationSet, reference, batch_size: int) -> float:
    return measure(simulate(prepared, plan, encodings), calib, reference, batch_size=batch_size).sqnr_db


def search_point(
    prepared: Prepared,
    encodings: Mapping[tuple[str, int], TensorEncoding],
    calib: CalibrationSet,
    budget: Budget,
    *,
    settings: Settings,
    store: ResultStore,
    evaluate: Evaluate | None,
    progress=None,
    require_stored: bool = False,
) -> SearchOutcome:
    """Phase 1 (resumable), phase 2, and selection of the point that meets `budget`."""
    timings = {}
    start = time.perf_counter()
    if require_stored:
        missing = _missing_phase1(prepared.analysis, store)
        if missing:
            raise BudgetError(f"{store.path}: phase 1 is incomplete ({missing} evaluations missing); run `onnxmp quantize` first")
    executor, jobs, threads = executor_for(settings.executor, settings.workers, settings.ray_address)
    reference = reference_outputs(prepared.model, calib, batch_size=settings.batch_size)  # once per run
    table = sensitivity(
        prepared.model, prepared.analysis, encodings, calib, store=store, batch_size=settings.batch_size,
        progress=progress, quantize_bias=prepared.profile.quantize_bias, executor=executor, jobs=jobs,
        threads=threads, reference=reference,
    )
    timings["phase1_s"] = time.perf_counter() - start
    start = time.perf_counter()
    curve = STRATEGIES[settings.strategy](table, prepared.analysis.groups, prepared.group_bops, prepared.reference_bops)
    timings["phase2_s"] = time.perf_counter() - start
    start = time.perf_counter()
    outcome = _select(prepared, encodings, calib, curve, budget, reference, settings=settings, evaluate=evaluate)
    timings["search_s"] = time.perf_counter() - start
    return replace(outcome, table=table, timings=timings)


def _select(prepared, encodings, calib, curve: ParetoCurve, budget: Budget, reference, *, settings: Settings, evaluate):
    """Pick the point for `budget`; measure its true SQNR (and accuracy where evaluated)."""
    measured: dict[int, float] = {}
    scores: dict[int, float] = {}
    baseline = None

    def sqnr_at(i: int) -> float:
        if i not in measured:
            measured[i] = measured_sqnr(prepared, curve[i].plan, encodings, calib, reference, settings.batch_size)
        return measured[i]

    def score_at(i: int) -> float:
        scores[i] = evaluate(simulate(prepared, curve[i].plan, encodings))
        return scores[i]

    if budget.target_bops is not None:
        selection = select_by_bops(curve, budget.target_bops)
    elif budget.min_sqnr_db is not None:
        selection = select_by_target(curve, sqnr_at, budget.min_sqnr_db, method=settings.search, what="SQNR (dB)")
    else:
        baseline = evaluate(prepared.model)
        selection = select_by_target(curve, score_at, baseline - budget.max_drop, method=settings.search, what="accuracy")
    sqnr_at(selection.index)
    curve = tuple(
        replace(p, measured_sqnr_db=measured.get(i), accuracy=scores.get(i)) for i, p in enumerate(curve)
    )
    return SearchOutcome(curve, replace(selection, point=curve[selection.index]), None, {}, baseline)


def _missing_phase1(analysis: GroupAnalysis, store: ResultStore) -> int:
    done = {(e["group"], e["candidate"]) for e in store.entries(STORE_KIND)}
    return sum((g.id, str(c)) not in done for g in analysis.groups for c in g.candidates)


def open_store(output_dir: Path, prepared: Prepared, settings: Settings) -> ResultStore:
    key = run_key(
        **prepared.fingerprints,
        range_method=settings.range_method.value,
        batch_size=str(settings.batch_size),
        runtime=runtime.ort.__version__,
        onnxmp=_version(),
    )
    return ResultStore(Path(output_dir) / STORE_NAME, key)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("onnxmp")
    except PackageNotFoundError:
        return "unknown"


def quantize(
    model: str | Path | onnx.ModelProto,
    *,
    profile: str | Path | HwProfile,
    calib,
    output_dir: str | Path,
    bits: str | Candidate | None = None,
    target_bops: float | None = None,
    min_sqnr_db: float | None = None,
    max_drop: float | None = None,
    evaluate: Evaluate | None = None,
    settings: Settings = Settings(),
    progress=None,
    require_stored: bool = False,
    verify: bool = False,
    encodings_version: str = "1.0.0",
) -> Result:
    """Quantize `model` for `profile` and write the QDQ model, plan, curve and report.

    Exactly one budget: `bits` (homogeneous, e.g. "W8A8"), `target_bops` (relative to
    W8A16 everywhere), `min_sqnr_db` (measured output SQNR on the calibration data), or
    `max_drop` (points of `evaluate(model)` below the float model's score).

    Raises:
        OnnxmpError: bad model, profile, calibration data or budget (one-line message).
    """
    timings: dict[str, float] = {}
    start = time.perf_counter()
    if isinstance(bits, str):
        bits = _parse_bits(bits)
    budget = Budget(bits, target_bops, min_sqnr_db, max_drop)
    budget.check(evaluate is not None)
    model, profile, calib = load_inputs(model, profile, calib)
    output_dir = Path(output_dir)
    prepared = prepare(model, profile, calib, verify=verify)
    del model  # a model loaded here lives on in prepared.model only
    timings["prepare_s"] = time.perf_counter() - start
    start = time.perf_counter()
    encodings = calibrate(
        prepared.model, prepared.graph, prepared.analysis, calib, profile=profile,
        method=settings.range_method, batch_size=settings.batch_size,
    )
    timings["calibrate_s"] = time.perf_counter() - start
    table, selection, float_score = None, None, None
    if bits is not None:
        plan = homogeneous_plan(prepared.analysis, bits, profile)
        reference = reference_outputs(prepared.model, calib, batch_size=settings.batch_size)
        point = replace(
            point_of(plan, prepared, None),
            measured_sqnr_db=measured_sqnr(prepared, plan, encodings, calib, reference, settings.batch_size),
        )
        curve: ParetoCurve = (point,)
    else:
        store = open_store(output_dir, prepared, settings)
        outcome = search_point(
            prepared, encodings, calib, budget, settings=settings, store=store,
            evaluate=evaluate, progress=progress, require_stored=require_stored,
        )
        curve, selection, table = outcome.curve, outcome.selection, outcome.table
        float_score = outcome.baseline_score
        timings.update(outcome.timings)
        plan, point = selection.point.plan, selection.point
    paths = emit(
        prepared, plan, encodings, output_dir, point=point, curve=curve, table=table, selection=selection,
        timings=timings, encodings_version=encodings_version,
    )
    return Result(plan, point, curve, selection, table, paths, timings, float_score)


def _parse_bits(text: str) -> Candidate:
    try:
        return Candidate.parse(text)
    except ValueError as e:
        raise BudgetError(f"--bits: {e}") from e


def emit(prepared: Prepared, plan: Plan, encodings, output_dir: Path, **facts) -> dict[str, Path]:
    """Write the deployable QDQ model and the run's records into `output_dir`."""
    from onnxmp import report

    chosen = quantizers_for(
        prepared.model, prepared.analysis, plan, encodings, quantize_bias=prepared.profile.quantize_bias
    )
    qdq = insert_quantizers(prepared.model, chosen, weights=WeightStorage.INTEGER)
    paths = {"model": model_io.save(qdq, output_dir / "model.qdq.onnx")}
    user_set, absent = encodings_format.user_named(
        prepared.original, prepared.model, {**chosen.weights, **chosen.biases}, chosen.activations
    )
    paths["encodings"] = model_io.write_text(
        encodings_format.to_json(user_set, version=facts.pop("encodings_version", "1.0.0")), output_dir / "encodings.json"
    )
    paths.update(report.write_all(prepared, plan, output_dir, absent=absent, **facts))
    return paths
