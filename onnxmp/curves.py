"""Curves and measured plans kept in the run's store, so strategies can be compared and rerun free.

Why: `onnxmp search --strategy mixquant -o out/` after a greedy run should show both curves
on one plot and in one pareto.csv, and a strategy that measures configurations (AdaQAT's
measured task loss) should never measure the same plan twice, even across runs. Both live in
the phase-1 store of the output folder under its run key (model, profile, calibration and
settings fingerprints), so a curve of another model or profile is never mixed in.

Rule cases:
1. A curve is stored whole, as one entry per run, under a label (the strategy and its mode);
   the latest entry of a label wins. Read back with a phase-1 table, points stored without a
   prediction get one.
2. A measured plan is stored as its output SQNR under a digest of the plan; reading back
   gives the same number without ONNX Runtime.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping

from onnxmp.records import Candidate, ParetoCurve, ParetoPoint, Plan, SensitivityTable
from onnxmp.store import ResultStore

CURVE_KIND = "curve"
PLAN_KIND = "plan_sqnr"


def save_curve(store: ResultStore, label: str, curve: ParetoCurve) -> None:
    """Append `curve` under `label`."""
    store.append(CURVE_KIND, {"label": label, "points": [_point_json(p) for p in curve]})


def stored_curves(store: ResultStore, table: SensitivityTable | None = None) -> dict[str, ParetoCurve]:
    """The latest curve of every label in the store, by label; with `table`, points stored
    without a prediction (MixQuant run before phase 1 was) get one."""
    curves = {}
    for entry in store.entries(CURVE_KIND):
        curves[entry["label"]] = tuple(_point_of(p, table) for p in entry["points"])
    return dict(sorted(curves.items()))


def stored_measure(store: ResultStore, measure: Callable[[Plan], float]) -> Callable[[Plan], float]:
    """`measure` (plan -> output SQNR in dB) through the store: each plan is measured once."""
    known = {e["plan"]: _float(e["sqnr_db"]) for e in store.entries(PLAN_KIND)}

    def measured(plan: Plan) -> float:
        digest = plan_digest(plan)
        if digest not in known:
            known[digest] = float(measure(plan))
            store.append(PLAN_KIND, {"plan": digest, "sqnr_db": _text(known[digest])})
        return known[digest]

    return measured


def plan_digest(plan: Mapping[str, Candidate]) -> str:
    """sha256 of the plan's (group, candidate) pairs in group order.

    >>> plan_digest(Plan({"b": Candidate(4, 8), "a": Candidate(8, 8)}))[:12]
    '25ed903e6d41'
    """
    text = json.dumps(sorted((g, str(c)) for g, c in plan.items()))
    return hashlib.sha256(text.encode()).hexdigest()


def _point_json(point: ParetoPoint) -> dict:
    return {
        "bops_rel": point.bops_rel,
        "predicted_sqnr_db": _text(point.predicted_sqnr_db),
        "measured_sqnr_db": None if point.measured_sqnr_db is None else _text(point.measured_sqnr_db),
        "accuracy": point.accuracy,
        "plan": {g: str(c) for g, c in point.plan.items()},
    }


def _point_of(data: Mapping, table: SensitivityTable | None) -> ParetoPoint:
    plan = Plan({g: Candidate.parse(c) for g, c in data["plan"].items()})
    measured = data.get("measured_sqnr_db")
    predicted = _float(data["predicted_sqnr_db"])
    if math.isnan(predicted) and table is not None:
        predicted = table.predicted_sqnr_db(plan)
    return ParetoPoint(data["bops_rel"], predicted, plan, None if measured is None else _float(measured), data.get("accuracy"))


def _text(value: float) -> float | str:
    """JSON has neither infinity nor NaN: they are written as strings."""
    return value if math.isfinite(value) else str(value)


def _float(value: float | str) -> float:
    return float(value)
