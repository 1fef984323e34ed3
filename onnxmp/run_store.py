"""Which phase-1 store a run reads and writes, and the plain run's results beside it.

Why: the store's key names every input that changes a phase-1 number (model, data, profile,
ranges, rounding, clipping, runtime version), so a resumed run or `onnxmp search` reuses
exactly the results that still hold, and runs that differ only in rounding can share one
file (the report overlays the plain run's curve from it).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from onnxmp import curves, runtime, versions
from onnxmp.hw_profile import ActivationClipping, WeightRounding
from onnxmp.phase1.run_table import stored_table
from onnxmp.records import ParetoCurve, SensitivityTable
from onnxmp.run_records import Prepared, Settings
from onnxmp.steps import activation_clipping, adaround_key
from onnxmp.store import ResultStore, run_key

STORE_NAME = "phase1.jsonl"


def open_store(output_dir: Path, prepared: Prepared, settings: Settings) -> ResultStore:
    """The phase-1 store of `output_dir`, keyed by every input that changes its numbers."""
    key = run_key(
        **prepared.fingerprints,
        range_method=settings.range_method.value,
        batch_size=str(settings.batch_size),
        weight_rounding=adaround_key(prepared, settings),
        activation_clipping=activation_clipping(prepared, settings).value,
        runtime=runtime.ort.__version__,
        onnxmp=versions.onnxmp_version(),
    )
    return ResultStore(Path(output_dir) / STORE_NAME, key)


def plain_phase1(prepared: Prepared, settings: Settings, store: ResultStore) -> tuple[SensitivityTable | None, ParetoCurve]:
    """The plain run's (nearest rounding, no bias correction, MSE ranges) table and curve when it left
    them in the same store file: read, never measured here (that would double phase 1; README "AdaRound")."""
    plain = replace(settings, weight_rounding=WeightRounding.NEAREST, bias_correction=False, output_range=False,
                    activation_clipping=ActivationClipping.TENSOR)
    other = open_store(store.path.parent, prepared, plain)
    table = stored_table(other, prepared.analysis) if other.key != store.key else None
    return table, (curves.stored_curves(other, table).get(settings.curve_label, ()) if table is not None else ())
