"""The phase-1 table of a run: measured (resumably) when the strategy needs it.

Why: `pipeline` orders the steps; which strategies need phase 1, and that `onnxmp search`
refuses an incomplete store, is phase 1's business (moved here from `pipeline`); so is
reading back a whole stored table (`stored_table`, for the report's overlay of the plain run).
"""

from __future__ import annotations

from onnxmp.errors import BudgetError
from onnxmp.phase1.executors import executor_for
from onnxmp.phase1.sensitivity import Phase1Context, Progress, sensitivity, stored_results
from onnxmp.records import GroupAnalysis, SensitivityTable, Strategy
from onnxmp.run_records import Calibrated, Settings
from onnxmp.store import ResultStore


def phase1_table(calibrated: Calibrated, settings: Settings, store: ResultStore, progress: Progress | None) -> SensitivityTable | None:
    """The phase-1 table; None for a strategy that needs none (MixQuant, measured AdaQAT) when
    the store does not already hold it (when it does, reading it back costs nothing)."""
    prepared = calibrated.prepared
    needed = settings.strategy in (Strategy.GREEDY, Strategy.AMED) or (settings.strategy is Strategy.ADAQAT and not settings.measured_loss)
    missing = missing_results(prepared.analysis, store)
    if missing and not needed:
        return None
    if missing and settings.require_stored:
        raise BudgetError(f"{store.path}: phase 1 is incomplete ({missing} evaluations missing); run quantize first")
    context = Phase1Context(
        prepared.model, prepared.analysis, calibrated.encodings, calibrated.calib, calibrated.reference,
        settings.batch_size, prepared.profile.quantize_bias, calibrated.rounded, calibrated.biases,
    )
    placement = executor_for(settings.executor, settings.workers, settings.ray_address)
    return sensitivity(context, store=store, placement=placement, progress=progress)


def missing_results(analysis: GroupAnalysis, store: ResultStore) -> int:
    """(group, candidate) pairs the store does not hold yet."""
    done = stored_results(store)
    return sum((g.id, c) not in done for g in analysis.groups for c in g.candidates)


def stored_table(store: ResultStore, analysis: GroupAnalysis) -> SensitivityTable | None:
    """The whole table `store` holds for `analysis`, None when any (group, candidate) is missing
    (the report's overlay of another run's table: read, never measured)."""
    done = stored_results(store)
    tasks = [(g.id, c) for g in analysis.groups for c in g.candidates]
    if not tasks or any(t not in done for t in tasks):
        return None
    return SensitivityTable({t: done[t].noise.sqnr_db for t in tasks})
