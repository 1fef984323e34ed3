"""Graph passes and search strategies of onnxmp (installed as `onnxmp.passes`).

Every pass is a function `ModelProto -> ModelProto` that never mutates its input.
`CANONICALIZE` is the literal, ordered list the pipeline runs before any analysis.
"""

from __future__ import annotations

from onnxmp.passes.canonicalize import fold_constants, infer_shapes, name_nodes, upgrade_opset
from onnxmp.passes.fold_batchnorm import fold_batchnorm
from onnxmp.passes.fuse_gelu import fuse_gelu

CANONICALIZE = (name_nodes, upgrade_opset, fold_constants, fold_batchnorm, fuse_gelu, infer_shapes)

__all__ = [
    "CANONICALIZE", "fold_batchnorm", "fold_constants", "fuse_gelu", "infer_shapes", "name_nodes", "upgrade_opset",
]
