"""The run's records as files: plan.json, sensitivity.json, pareto.csv, report.md.

Why: users read the plan and the curve to trust (or overrule) the search; scripts read the
JSON/CSV. Every file is written atomically.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping
from pathlib import Path

from onnxmp import bops, model_io, versions
from onnxmp.float_candidate import estimate_error
from onnxmp.float_candidate import label as candidate_label
from onnxmp.records import ParetoCurve, ParetoPoint, Plan, SensitivityTable
from onnxmp.report_html import deployed_note, refined_written, report_html
from onnxmp.run_records import Decision, Prepared


def _number(value: float | None) -> float | str | None:
    """JSON has no infinity: +inf dB (zero noise) is written as the string "inf"."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return "inf" if value == math.inf else round(float(value), 6)


def plan_json(prepared: Prepared, plan: Plan, point: ParetoPoint) -> dict:
    """The chosen plan group by group, with the ops left in float and why."""
    groups = []
    for group in prepared.analysis.groups:
        if group.id not in plan:
            continue
        groups.append({
            "id": group.id,
            "candidate": candidate_label(plan[group.id]),
            "ops": list(group.ops),
            "weights": list(group.weights),
            "activations": list(group.activations),
            "macs_share": round(bops.macs_share(group, prepared.macs), 6),
        })
    return {
        "profile": prepared.profile.name,
        "bops_rel": _number(point.bops_rel),
        "predicted_sqnr_db": _number(point.predicted_sqnr_db),
        "measured_sqnr_db": _number(point.measured_sqnr_db),
        "deployed_sqnr_db": _number(point.deployed_sqnr_db),
        "onnxruntime": versions.versions()["onnxruntime"],
        "accuracy": _number(point.accuracy),
        "latency_ms": _number(point.latency_ms),
        "measured_latency_ms": _number(point.measured_latency_ms),
        "latency_estimate_error_pct": _number(latency_error(point)),
        "groups": groups,
        "float_ops": [{"node": s.node, "op_type": s.op_type, "reason": s.reason} for s in prepared.analysis.skipped],
    }


def refinement_note(decision: Decision) -> str:
    """What AdaRound on the chosen plan's own network measured, and which weights were written."""
    refined, stitched = decision.refined_sqnr_db, decision.point.measured_sqnr_db
    written = "the re-rounded weights" if refined_written(decision.point, refined) else "the search's weights (better)"
    return (f"AdaRound on the chosen plan's own network: measured {_csv(refined)} dB, "
            f"{_csv(stitched)} dB with the search's weights; written: {written}")


def latency_error(point: ParetoPoint) -> float | None:
    """The latency model's error against the measured whole model, in percent (None if either is missing)."""
    if point.latency_ms is None or point.measured_latency_ms is None:
        return None
    return estimate_error(point.latency_ms, point.measured_latency_ms)


def sensitivity_json(prepared: Prepared, table: SensitivityTable) -> dict:
    return {
        group.id: {str(c): _number(table.of(group.id, c)) for c in group.candidates}
        for group in prepared.analysis.groups
    }


def pareto_csv(curves: Mapping[str, ParetoCurve], prepared: Prepared) -> str:
    """Every curve (this run's first, then the store's other strategies), one row per point;
    `index` counts within a curve, `moved_group`/`to` name the first group that changed;
    `weight_bytes` is the model's constants at that plan (`bops.weight_bytes`)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([
        "index", "bops_rel", "predicted_sqnr_db", "measured_sqnr_db", "accuracy", "moved_group", "to", "strategy",
        "latency_ms", "weight_bytes",
    ])
    tables = None if prepared.profile.embeddings is None else prepared.profile.embeddings.bits
    for label, curve in curves.items():
        previous = None
        for i, point in enumerate(curve):
            moved = [g for g in point.plan if previous is not None and previous[g] != point.plan[g]]
            size = bops.weight_bytes(prepared.graph, prepared.analysis, point.plan, table_bits=tables)
            writer.writerow([
                i, f"{point.bops_rel:.6f}", _csv(point.predicted_sqnr_db), _csv(point.measured_sqnr_db),
                _csv(point.accuracy), moved[0] if moved else "", str(point.plan[moved[0]]) if moved else "", label,
                _csv(point.latency_ms), size,
            ])
            previous = point.plan
    return buffer.getvalue()


def _csv(value: float | None) -> str:
    number = _number(value)
    return "" if number is None else str(number)


def report_md(prepared: Prepared, decision: Decision) -> str:
    plan, point, selection = decision.plan, decision.point, decision.selection
    lines = [
        "# onnxmp report", "",
        f"- profile: {prepared.profile.name}",
        f"- groups: {len(prepared.analysis.groups)}, ops left in float: {len(prepared.analysis.skipped)}",
        f"- relative BOPs: {point.bops_rel:.4f}",
        f"- predicted SQNR: {_csv(point.predicted_sqnr_db)} dB, measured: {_csv(point.measured_sqnr_db)} dB",
        f"- deployed SQNR: {deployed_note(point, decision.refined_sqnr_db)}",
    ]
    if point.latency_ms is not None:
        lines.append(f"- latency ({prepared.profile.name} latency model, batch 1): {point.latency_ms:.4f} ms")
    if point.measured_latency_ms is not None:
        lines.append(f"- measured latency (whole model, batch 1, median): {point.measured_latency_ms:.4f} ms; "
                     f"estimate error {latency_error(point):+.1f} %")
    if selection is not None:
        lines.append(f"- selection: {selection.method}, curve index {selection.index}, {selection.evaluations} evaluations")
    if decision.refined_sqnr_db is not None:
        lines.append(f"- {refinement_note(decision)}")
    lines += [f"- {name}: {value:.3f}" for name, value in decision.timings.items()]
    lines += [f"- curve {label}: {len(c)} points, relative BOPs {c[-1].bops_rel:.4f} to {c[0].bops_rel:.4f}"
              for label, c in decision.curves.items() if c]
    lines += [f"- fingerprint {k}: {v[:16]}" for k, v in prepared.fingerprints.items()]
    lines += ["", "| group | candidate | ops |", "| --- | --- | --- |"]
    lines += [f"| {g} | {candidate_label(c)} | {len(prepared.analysis.group(g).ops)} |" for g, c in plan.items()]
    return "\n".join(lines) + "\n"


def write_all(prepared: Prepared, decision: Decision, output_dir: Path, *, absent: Mapping[str, str] | None = None) -> dict[str, Path]:
    """Write plan.json, pareto.csv, report.md, report.html and (after phase 1) sensitivity.json."""
    plan, point, table = decision.plan, decision.point, decision.table
    plan_data = plan_json(prepared, plan, point)
    plan_data["refined_sqnr_db"] = _number(decision.refined_sqnr_db)
    plan_data["encodings_absent"] = [{"tensor": t, "reason": r} for t, r in sorted((absent or {}).items())]
    paths = {
        "plan": model_io.write_text(json.dumps(plan_data, indent=2) + "\n", output_dir / "plan.json"),
        "pareto": model_io.write_text(pareto_csv(decision.curves or {"homogeneous": decision.curve}, prepared), output_dir / "pareto.csv"),
        "report": model_io.write_text(
            report_md(prepared, decision), output_dir / "report.md"
        ),
        "html": model_io.write_text(report_html(prepared, decision), output_dir / "report.html"),
    }
    if table is not None:
        text = json.dumps(sensitivity_json(prepared, table), indent=2) + "\n"
        paths["sensitivity"] = model_io.write_text(text, output_dir / "sensitivity.json")
    return paths
