"""Search strategies (phase 2) and point selection.

`STRATEGIES` is the literal registry: every strategy has the signature of
`greedy.pareto_curve(table, groups, bops, reference_bops) -> ParetoCurve`.
"""

from __future__ import annotations

from onnxmp.passes.search import greedy
from onnxmp.passes.search.select import select_by_bops, select_by_target
from onnxmp.records import SearchMethod

STRATEGIES = {"greedy": greedy.pareto_curve}

__all__ = ["STRATEGIES", "SearchMethod", "select_by_bops", "select_by_target"]
