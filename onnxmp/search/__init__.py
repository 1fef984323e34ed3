"""Phase 2 and selection: which candidate each group takes.

This package owns the strategies that turn a sensitivity table and a cost model into a
curve of configurations (`greedy`, the paper's SQNR-per-BOP walk, and the strategies that
come after it), and the selection of one point on any such curve by budget or by a
measured target (`select`). Strategies are pure functions of records: they never run ONNX
Runtime themselves; when a selection must measure, the measuring function is a parameter.
`STRATEGIES` is the literal registry: every strategy is a `space.StrategyFunction`,
`(SearchSpace, StrategyOptions) -> ParetoCurve` (greedy's Pareto walk, MixQuant's QEM
sweep, AdaQAT's lambda descent), so the selection works on any strategy's curve.
"""

from __future__ import annotations

from onnxmp.records import SearchMethod, Strategy
from onnxmp.search import adaqat, amed, greedy, mixquant
from onnxmp.search.select import select_best, select_by_bops, select_by_latency, select_by_target
from onnxmp.search.select_measured import check_selection, verify_budget, verify_selection
from onnxmp.search.space import QuantErrorTable, SearchSpace, StrategyFunction, StrategyOptions

STRATEGIES: dict[Strategy, StrategyFunction] = {
    Strategy.GREEDY: greedy.search,
    Strategy.MIXQUANT: mixquant.pareto_curve,
    Strategy.ADAQAT: adaqat.pareto_curve,
    Strategy.AMED: amed.strategy,
}

__all__ = [
    "STRATEGIES",
    "QuantErrorTable",
    "SearchMethod",
    "SearchSpace",
    "Strategy",
    "StrategyOptions",
    "check_selection",
    "select_best",
    "select_by_bops",
    "select_by_latency",
    "select_by_target",
    "verify_budget",
    "verify_selection",
]
