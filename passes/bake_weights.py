"""Bake rounded weights into a float model: `model.adarounded.onnx`.

Why: AIMET exports AdaRound as a float model whose weights already sit on their AdaRounded
grid points, plus encodings with frozen weight scales. Quantizing that model with those
encodings rounds every weight to the integer it already is (round(s * q / s) = q), so any
tool that reads AIMET encodings (`onnxmp apply`, AIMET's `load_encodings_to_sim`)
reproduces the QDQ model without knowing about AdaRound.

Rule cases:
1. Every weight with given integers becomes s * q (float32, per channel along the
   encoding's axis); other initializers are unchanged.
2. Initializers a canonicalization pass made (a BN-folded weight, marked with the
   `onnxmp:from=` provenance) take back the user's name when that name is free, so the
   encodings file, which names the user's tensors, applies to the baked model too.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
from onnx import numpy_helper

from onnxmp import quant_math
from onnxmp.encodings import PROVENANCE_PREFIX, EncodingSet


def bake_weights(model: onnx.ModelProto, *, quantizers: EncodingSet) -> onnx.ModelProto:
    """A copy of `model` with `quantizers.integers` baked in as float weights (user-named)."""
    result = onnx.ModelProto()
    result.CopyFrom(model)
    graph = result.graph
    for init in graph.initializer:
        q = quantizers.integers.get(init.name)
        if q is None:
            continue
        enc = quantizers.weights[init.name]
        scale = np.asarray(enc.scale, np.float32).reshape(quant_math.broadcast_shape(q.ndim, enc.axis))
        provenance = init.doc_string
        init.CopyFrom(numpy_helper.from_array(quant_math.dequantize(q, scale, 0), init.name))
        init.doc_string = provenance
    _restore_user_names(graph, _renames(graph))
    return result


def _renames(graph: onnx.GraphProto) -> dict[str, str]:
    """Canonical initializer name -> the user's, where the user's name is free."""
    used = {t for n in graph.node for t in (*n.input, *n.output)} | {v.name for v in (*graph.input, *graph.output)}
    used |= {i.name for i in graph.initializer}
    renames = {}
    for init in graph.initializer:
        if init.doc_string.startswith(PROVENANCE_PREFIX):
            user = init.doc_string[len(PROVENANCE_PREFIX):]
            if user not in used:
                renames[init.name] = user
                used.add(user)
    return renames


def _restore_user_names(graph: onnx.GraphProto, renames: Mapping[str, str]) -> None:
    for init in graph.initializer:
        if init.name in renames:
            init.name = renames[init.name]
            init.doc_string = ""
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in renames:
                node.input[i] = renames[name]
