"""Phase 2 and selection: which candidate each group takes.

This package owns the strategies that turn a sensitivity table and a cost model into a
curve of configurations (`greedy`, the paper's SQNR-per-BOP walk, and the strategies that
come after it), and the selection of one point on any such curve by budget or by a
measured target (`select`). Strategies are pure functions of records: they never run ONNX
Runtime themselves; when a selection must measure, the measuring function is a parameter.
`STRATEGIES` is the literal registry: every strategy has the signature of
`greedy.pareto_curve(table, groups, bops, reference_bops) -> ParetoCurve`.
"""

from __future__ import annotations

from onnxmp.records import SearchMethod, Strategy
from onnxmp.search import greedy
from onnxmp.search.select import select_by_bops, select_by_target

STRATEGIES = {Strategy.GREEDY: greedy.pareto_curve}

__all__ = ["STRATEGIES", "SearchMethod", "Strategy", "select_by_bops", "select_by_target"]
