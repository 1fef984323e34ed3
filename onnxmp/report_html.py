"""The run as one self-contained HTML page: Pareto curve, per-group sensitivity, plan, facts.

Why: a reviewer decides whether to trust a plan by seeing where it sits on the curve next to
the homogeneous baselines and which groups are sensitive. One file with inline SVG opens
anywhere with no network and no scripts, and the same inputs give the same bytes, so reports
can be diffed and archived. Plots use `matplotlib.figure.Figure` directly (no pyplot, no
backend switch, no global state); rc settings live in one `rc_context`.
"""

from __future__ import annotations

import html
import io
import math
import re
from collections.abc import Mapping, Sequence

import matplotlib
from matplotlib.figure import Figure

from onnxmp import bops, versions
from onnxmp.errors import BudgetError
from onnxmp.float_candidate import label as candidate_label
from onnxmp.records import ParetoCurve, ParetoPoint, Plan, QuantizerGroup, SensitivityTable
from onnxmp.run_records import Decision, Prepared, homogeneous_plan

# svg.hashsalt fixes the ids matplotlib hashes; fonttype "path" draws glyphs so the page
# looks the same whatever fonts the viewer has.
_RC = {"svg.hashsalt": "onnxmp", "svg.fonttype": "path", "font.size": 9.0, "axes.grid": True, "grid.alpha": 0.3}
_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive")
_CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.2em .6em;text-align:left}
th{background:#f0f0f0}svg{max-width:100%;height:auto}code{font-size:.9em}"""


def report_html(prepared: Prepared, decision: Decision) -> str:
    """Return the report page as a string; the caller writes it (atomically).

    The decision's table and selection are None for a homogeneous run: the page then shows
    the one measured point and says that phase 1 did not run.
    """
    plan, point, curve, table = decision.plan, decision.point, decision.curve, decision.table
    baselines = _homogeneous_points(prepared, table) if table is not None else []
    with matplotlib.rc_context(_RC):
        pareto = _svg(_pareto_figure(point, curve, baselines, decision.curves, decision.plain_curve), "pareto")
        sensitivity = (
            _svg(_sensitivity_figure(prepared.analysis.groups, table, decision.plain_table), "sensitivity")
            if table is not None else "<p>Not measured: a homogeneous run has no phase 1.</p>"
        )
    body = [
        "<h1>onnxmp report</h1>",
        f"<p>Profile <b>{_e(prepared.profile.name)}</b>: {len(prepared.analysis.groups)} groups, "
        f"{len(prepared.analysis.skipped)} ops left in float. Chosen point: relative BOPs "
        f"{point.bops_rel:.4f}, predicted SQNR {_db(point.predicted_sqnr_db)} dB, "
        f"measured {_db(point.measured_sqnr_db)} dB; deployed {_e(deployed_note(point, decision.refined_sqnr_db))}.</p>",
        "<h2>Pareto curve</h2>", pareto,
        _table(("homogeneous", "relative BOPs", "predicted SQNR (dB)"),
               [(name, f"{x:.4f}", _db(y)) for name, x, y in baselines]) if baselines else "",
        "<h2>Sensitivity per group (network order)</h2>", sensitivity,
        "<h2>Chosen plan</h2>", _plan_table(prepared, plan, table),
        "<h2>Ops left in float</h2>", _float_ops(prepared),
        "<h2>Run facts</h2>", _table(("fact", "value"), _facts(prepared, decision)),
    ]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>onnxmp report: {_e(prepared.profile.name)}</title><style>{_CSS}</style></head>\n"
            "<body>\n" + "\n".join(part for part in body if part) + "\n</body></html>\n")


def _homogeneous_points(prepared: Prepared, table: SensitivityTable) -> list[tuple[str, float, float]]:
    """(kernel, relative BOPs, predicted SQNR) of every kernel applied everywhere it can run.

    Why: these are the baselines a mixed plan must beat. A kernel some group cannot take
    gives no homogeneous configuration and is left out.
    """
    points = []
    for kernel in prepared.profile.kernels:
        try:
            plan = homogeneous_plan(prepared.analysis, kernel, prepared.profile)
        except BudgetError:
            continue
        rel = bops.relative_bops(plan, prepared.group_bops, prepared.reference_bops)
        points.append((str(kernel), rel, table.predicted_sqnr_db(plan)))
    return points


def _pareto_figure(
    point: ParetoPoint, curve: Sequence[ParetoPoint], baselines, curves: Mapping[str, ParetoCurve], plain: ParetoCurve = ()
) -> Figure:
    """This run's curve, the store's other strategies' curves (`curves` beyond the first), the
    same curve with plain weights (`plain`: nearest rounding, no bias correction, when the
    store has it), the homogeneous baselines and the chosen point, on one plot."""
    fig = Figure(figsize=(7.5, 4.2), layout="constrained")
    ax = fig.add_subplot()
    own = next(iter(curves), "")
    if any(_finite(p.predicted_sqnr_db) for p in curve):  # a homogeneous run predicts nothing
        ax.plot([p.bops_rel for p in curve], [_plottable(p.predicted_sqnr_db) for p in curve],
                "o-", ms=3, color="tab:blue", label=f"{own} predicted SQNR".strip())
    for i, (label, other) in enumerate((k, c) for k, c in curves.items() if k != own):
        shown = [p for p in other if _finite(p.predicted_sqnr_db)]
        ax.plot([p.bops_rel for p in shown], [p.predicted_sqnr_db for p in shown], "o--", ms=2, lw=1,
                color=_COLORS[(i + 2) % len(_COLORS)], label=f"{label} predicted SQNR")
    shown = [p for p in plain if _finite(p.predicted_sqnr_db)]
    if shown:
        ax.plot([p.bops_rel for p in shown], [p.predicted_sqnr_db for p in shown], "x:", ms=3, lw=1, color="black",
                label=f"{own} predicted SQNR, nearest rounding".strip())
    measured = [p for p in curve if _finite(p.measured_sqnr_db)]
    if measured:
        ax.plot([p.bops_rel for p in measured], [p.measured_sqnr_db for p in measured], "s", ms=7, mfc="none", color="tab:orange", label="measured SQNR")
    for i, (name, x, y) in enumerate(baselines):
        ax.plot(x, _plottable(y), "D", color="tab:gray", label="homogeneous" if i == 0 else None)
        ax.annotate(name, (x, _plottable(y)), textcoords="offset points", xytext=(5, -11))
    chosen_y = point.predicted_sqnr_db if _finite(point.predicted_sqnr_db) else point.measured_sqnr_db
    if _finite(chosen_y):
        ax.plot(point.bops_rel, chosen_y, "*", ms=15, color="tab:red", label="chosen", zorder=5)
    ax.set_xlabel("relative BOPs (W8A16 everywhere = 1)")
    ax.set_ylabel("output SQNR (dB)")
    handles, labels = ax.get_legend_handles_labels()
    scored = [p for p in curve if _finite(p.accuracy)]
    if scored:
        twin = ax.twinx()
        twin.plot([p.bops_rel for p in scored], [p.accuracy for p in scored], "^", color="tab:green", label="accuracy")
        twin.set_ylabel("accuracy")
        twin.grid(False)
        extra = twin.get_legend_handles_labels()
        handles, labels = handles + extra[0], labels + extra[1]
    ax.legend(handles, labels, loc="lower right")
    return fig


def _sensitivity_figure(groups: Sequence[QuantizerGroup], table: SensitivityTable, plain: SensitivityTable | None = None) -> Figure:
    """Grouped bars: SQNR with one group quantized alone, per candidate (the paper's Figure 3).

    +inf dB (the group changes nothing) is drawn as a hatched bar at the top, marked ∞. With
    `plain` (the same table with nearest rounding, no bias correction) a black tick on each
    bar marks its plain value, so what AdaRound / bias correction gained is the gap.
    """
    order = list(dict.fromkeys(c for g in groups for c in g.candidates))
    colors = {c: _COLORS[i % len(_COLORS)] for i, c in enumerate(order)}
    tables = (table,) if plain is None else (table, plain)
    finite = [db for t in tables for g in groups for c in g.candidates if _finite(db := t.of(g.id, c))]
    top = max(finite, default=1.0) * 1.08
    fig = Figure(figsize=(min(16.0, 2.5 + 0.5 * len(groups)), 4.2), layout="constrained")
    ax = fig.add_subplot()
    seen: set[object] = set()
    for i, group in enumerate(groups):
        width = 0.8 / len(group.candidates)
        for j, candidate in enumerate(group.candidates):
            db = table.of(group.id, candidate)
            x = i - 0.4 + (j + 0.5) * width
            label = None if candidate in seen else str(candidate)
            seen.add(candidate)
            ax.bar(x, db if _finite(db) else top, width, color=colors[candidate], label=label,
                   hatch=None if _finite(db) else "//")
            if not _finite(db):
                ax.text(x, top, "∞", ha="center", va="bottom")
            if plain is not None and _finite(before := plain.of(group.id, candidate)):
                ax.plot(x, before, "_", ms=max(4.0, 40 * width), mew=1.5, color="black",
                        label=None if "nearest" in seen else "nearest rounding")
                seen.add("nearest")
    ax.set_xticks(range(len(groups)), [g.id for g in groups], rotation=45, ha="right")
    ax.set_ylabel("SQNR, group alone (dB)")
    if seen:  # no groups, no bars: a legend of nothing makes matplotlib warn on stderr
        ax.legend(ncols=min(len(order), 6), loc="upper center", bbox_to_anchor=(0.5, 1.15))
    return fig


def _svg(fig: Figure, prefix: str) -> str:
    """The figure as an inline <svg> element, byte-stable, with ids unique within the page.

    Why: the XML prolog and DOCTYPE are not allowed inside HTML, <metadata> carries the
    matplotlib version and URLs, and two inline SVGs share one id namespace.
    """
    buffer = io.BytesIO()
    fig.savefig(buffer, format="svg", metadata={"Date": None})
    text = buffer.getvalue().decode("utf-8")
    text = re.sub(r"\s*<metadata>.*?</metadata>", "", text[text.index("<svg"):], flags=re.S)
    return re.sub(r'(\bid="|xlink:href="#|href="#|url\(#)', rf"\g<1>{prefix}-", text)


def _plan_table(prepared: Prepared, plan: Plan, table: SensitivityTable | None) -> str:
    rows = []
    for group in prepared.analysis.groups:
        if group.id not in plan:
            continue
        share = bops.macs_share(group, prepared.macs)
        alone = _db(table.of(group.id, plan[group.id])) if table is not None else "–"
        rows.append((group.id, ", ".join(group.ops), candidate_label(plan[group.id]), f"{100 * share:.1f} %", alone))
    return _table(("group", "ops", "W/A bits", "share of MACs", "SQNR alone (dB)"), rows)


def _float_ops(prepared: Prepared) -> str:
    skipped = prepared.analysis.skipped
    if not skipped:
        return "<p>None: every op is quantized or passes a quantizer through.</p>"
    return _table(("node", "op type", "reason"), [(s.node, s.op_type, s.reason) for s in skipped])


def _facts(prepared: Prepared, decision: Decision) -> list[tuple[str, str]]:
    point, selection = decision.point, decision.selection
    how = ("homogeneous (no search)" if selection is None
           else f"{selection.method}, curve index {selection.index}, {selection.evaluations} evaluations")
    rows = [("selection", how), ("accuracy", "–" if point.accuracy is None else f"{point.accuracy:.4f}")]
    rows += [_timing(name, value) for name, value in decision.timings.items()]
    rows += [(f"fingerprint {name}", digest) for name, digest in prepared.fingerprints.items()]
    return rows + [(f"version {name}", version) for name, version in versions.versions().items()]


def _timing(name: str, value: float) -> tuple[str, str]:
    """Keys ending in `_s` are seconds; any other key is shown as a plain number."""
    if name.endswith("_s"):
        return f"time {name[:-2]}", f"{value:.3f} s"
    return name.replace("_", " "), f"{value:.4f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(cell)}</td>" for cell in row) + "</tr>\n" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody></table>"


def _e(text: object) -> str:
    return html.escape(str(text))


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def _plottable(value: float) -> float:
    """Matplotlib cannot place ±inf; NaN leaves a gap instead."""
    return value if math.isfinite(value) else math.nan


def refined_written(point: ParetoPoint, refined: float | None) -> bool:
    """Whether the model was written with the plan-rounded weights (`plan_rounding.refine`'s rule:
    they measured a higher SQNR than the search's)."""
    return refined is not None and (point.measured_sqnr_db is None or refined > point.measured_sqnr_db)


def written_sqnr(point: ParetoPoint, refined: float | None) -> float | None:
    """The simulated SQNR of the weights the model was written with."""
    return refined if refined_written(point, refined) else point.measured_sqnr_db


def deployed_note(point: ParetoPoint, refined: float | None = None) -> str:
    """The written model's SQNR in ONNX Runtime with its QDQ rewrites on, and how far that is
    from the simulated SQNR of the same weights (`refined`: the plan-rounded weights' SQNR):
    what users get against what onnxmp measured."""
    if point.deployed_sqnr_db is None:
        return "not measured"
    text = f"{_db(point.deployed_sqnr_db)} dB in ONNX Runtime {versions.versions()['onnxruntime']} (default options)"
    measured = written_sqnr(point, refined)
    if measured is not None and math.isfinite(measured) and math.isfinite(point.deployed_sqnr_db):
        text += f", {point.deployed_sqnr_db - measured:+.2f} dB against the simulation"
    return text


def _db(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "–"
    return "inf" if value == math.inf else f"{value:.2f}"
