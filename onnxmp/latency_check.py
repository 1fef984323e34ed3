"""The profile's latency model of a run, a plan's whole-model latency on this machine, and the
configurations the check compares.

Why: with the `ort` latency model the selection checks its estimate against the model a user
deploys (`search.select_measured`): this module builds that model (integer weights, as
`emit` writes it), times it at batch 1 on the first calibration sample, and lists the
homogeneous configurations the profile allows (every kernel everywhere, and all float when
the profile lists `float`). `latency_of` (moved here from `steps`) builds the estimate the
search uses.
"""

from __future__ import annotations

from collections.abc import Callable

from onnxmp import bops
from onnxmp.errors import BudgetError
from onnxmp.float_candidate import float_of
from onnxmp.latency import SystolicLatency, layers_of
from onnxmp.latency_spec import OrtSpec, SystolicSpec
from onnxmp.passes.insert_qdq import WeightStorage, insert_quantizers
from onnxmp.phase1.ort_latency import Timing, timed
from onnxmp.phase1.ort_model import ort_latency_model
from onnxmp.records import ParetoPoint, Plan, SensitivityTable
from onnxmp.run_records import Calibrated, homogeneous_plan
from onnxmp.steps import biased_model, point_of, quantizers
from onnxmp.store import ResultStore

Latency = Callable[[Plan], float]


def latency_of(calibrated: Calibrated, store: ResultStore | None = None) -> Latency | None:
    """The profile's latency model as `plan -> milliseconds` at batch 1 (None without one).

    `systolic` costs each (layer, operand widths) once, kept in `store`; `ort` measures every
    group at every candidate and fits the border cost on this machine, once per store
    (onnxmp.phase1.ort_model).
    """
    prepared = calibrated.prepared
    spec = prepared.profile.latency
    if spec is None:
        return None
    shapes = {name: (1, *array.shape[1:]) for name, array in calibrated.calib.arrays.items()}
    if isinstance(spec, SystolicSpec):
        layers = layers_of(bops.concrete_graph(prepared.model, shapes), prepared.analysis)
        return SystolicLatency(layers, spec, store=store).latency_ms
    measured = ort_latency_model(
        prepared.model, prepared.analysis, calibrated.encodings, spec,
        sample_shapes=shapes, quantize_bias=prepared.profile.quantize_bias, store=store,
    )
    return measured.latency_ms


def ort_spec(calibrated: Calibrated) -> OrtSpec | None:
    spec = calibrated.prepared.profile.latency
    return spec if isinstance(spec, OrtSpec) else None


def measure_plan(calibrated: Calibrated, spec: OrtSpec) -> Callable[[Plan], Timing]:
    """plan -> median and IQR of one batch-1 run of its deployable model (each plan once)."""
    prepared = calibrated.prepared
    feeds = next(calibrated.calib.batches(1))
    known: dict[Plan, Timing] = {}

    def measured(plan: Plan) -> Timing:
        if plan not in known:
            chosen = quantizers(prepared, plan, calibrated.encodings, calibrated.rounded, calibrated.biases)
            model = insert_quantizers(biased_model(prepared, plan, calibrated.biases), chosen, weights=WeightStorage.INTEGER)
            known[plan] = timed(model, feeds, spec)
        return known[plan]

    return measured


def homogeneous_points(
    calibrated: Calibrated, table: SensitivityTable | None, latency: Callable[[Plan], float]
) -> list[ParetoPoint]:
    """Every kernel of the profile everywhere (groups that cannot take one are skipped), then
    all float when the profile lets groups stay float; each with its estimated latency."""
    prepared = calibrated.prepared
    plans = []
    for kernel in prepared.profile.kernels:
        try:
            plans.append(homogeneous_plan(prepared.analysis, kernel, prepared.profile))
        except BudgetError:
            continue
    if prepared.profile.float_groups:
        plans.append(Plan({g.id: float_of(g.highest) for g in prepared.analysis.groups}))
    points = []
    for plan in plans:
        point = point_of(plan, prepared, table)
        points.append(ParetoPoint(point.bops_rel, point.predicted_sqnr_db, plan, latency_ms=latency(plan)))
    return points
