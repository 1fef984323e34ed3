"""Activation ranges that an op defines, whatever the data: no calibration needed.

Why: a Softmax output lies in [0, 1] by definition, and devices quantize it on that fixed
grid (scale 1/255 at 8 bits, zero point 0). A range from calibration statistics would
depend on the sentences seen and might clip the rare probability near 1 that decides an
attention head.

Rule cases: the output of Softmax (and of Sigmoid) is [0, 1]; every other tensor has no
known range.
"""

from __future__ import annotations

from onnxmp.graph import DataflowGraph

_UNIT_INTERVAL_OPS = frozenset({"Softmax", "Sigmoid"})


def known_range(graph: DataflowGraph, tensor: str) -> tuple[float, float] | None:
    """(low, high) of `tensor` when its producer defines it, else None.

    >>> from onnx import helper
    >>> from onnxmp.graph import build
    >>> node = helper.make_node("Softmax", ["x"], ["p"], name="softmax")
    >>> model = helper.make_model(helper.make_graph([node], "g", [], []))
    >>> known_range(build(model), "p"), known_range(build(model), "x")
    ((0.0, 1.0), None)
    """
    producer = graph.producer(tensor)
    if producer is not None and producer.op_type in _UNIT_INTERVAL_OPS:
        return 0.0, 1.0
    return None
