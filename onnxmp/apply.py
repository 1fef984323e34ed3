"""Build a QDQ model from an encodings file: `onnxmp apply`.

Why: AIMET users bring encodings they already have, and our own file must reproduce our
model exactly (quantize -> encodings -> apply gives the same outputs). The file names the
user's tensors; they are mapped onto the canonical model, and names the model lacks are
returned for the caller to report.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import onnx

from onnxmp import encodings as encodings_format
from onnxmp import graph, model_io
from onnxmp.errors import EncodingsError
from onnxmp.passes import CANONICALIZE
from onnxmp.passes.calibrate import weight_axis
from onnxmp.passes.insert_qdq import WeightStorage, insert_quantizers
from onnxmp.records import TensorEncoding
from onnxmp.steps import run_passes


def apply_encodings(
    model: str | Path | onnx.ModelProto, encodings_path: str | Path, output_dir: str | Path, *, verify: bool = False
) -> tuple[Path, tuple[str, ...]]:
    """Build the QDQ model of `model` from an AIMET encodings file (ours or AIMET's).

    Returns the model path and the names in the file that the model does not have.
    """
    original = model if isinstance(model, onnx.ModelProto) else model_io.load(model)
    canonical = run_passes(original, CANONICALIZE, verify=verify)
    index = graph.build(canonical)
    path = Path(encodings_path)
    try:
        loaded = encodings_format.from_json(path.read_text(), where=str(path))
    except OSError as e:
        raise EncodingsError(f"{path}: cannot read: {e.strerror}") from e
    to_canonical = {user: canon for canon, user in encodings_format.original_names(original, canonical).items()}
    unknown = tuple(sorted(n for n in (*loaded.params, *loaded.activations) if n not in to_canonical))
    weights: dict[str, TensorEncoding] = {}
    biases: dict[str, TensorEncoding] = {}
    activations: dict[str, TensorEncoding] = {}
    for user, enc in loaded.params.items():
        if user not in to_canonical:
            continue
        name = to_canonical[user]
        is_bias = user in loaded.biases
        axis = (weight_axis(index, name) if enc.bits < 32 else 0) if enc.axis is not None else None
        channels = index.shapes.get(name, ())[axis] if axis is not None and axis < len(index.shapes.get(name, ())) else 1
        if len(enc.scale) != (channels if axis is not None else 1):
            raise EncodingsError(f"{path}: {user}: {len(enc.scale)} scales, the tensor has {channels} channels")
        (biases if is_bias else weights)[name] = replace(enc, name=name, axis=axis)
    for user, enc in loaded.activations.items():
        if user in to_canonical:
            activations[to_canonical[user]] = replace(enc, name=to_canonical[user])
    if not (weights or activations):
        raise EncodingsError(f"{path}: no tensor named in the file exists in the model")
    qdq = insert_quantizers(canonical, encodings_format.EncodingSet(weights, activations, biases), weights=WeightStorage.INTEGER)
    return model_io.save(qdq, Path(output_dir) / "model.qdq.onnx"), unknown
