"""Build a QDQ model from an encodings file: `onnxmp apply`.

Why: AIMET users bring encodings they already have, and our own file must reproduce our
model exactly (quantize -> encodings -> apply gives the same outputs). The file names the
user's tensors; they are mapped onto the canonical model, and names the model lacks are
returned for the caller to report. Every encoding is checked against the file's schema
(`encodings_read`) and then against the tensor it names (a weight must be a float
initializer some op reads, with one scale per output channel; an activation a computed
float tensor, per tensor) before anything is built: a bad file is one line, never a model
that ONNX Runtime refuses or that runs at chance level.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import onnx

from onnxmp import encodings as encodings_format
from onnxmp import graph, model_io, output_folder
from onnxmp.emit import OUTPUT_FILES
from onnxmp.errors import EncodingsError, OutputError
from onnxmp.graph import DataflowGraph
from onnxmp.passes import CANONICALIZE
from onnxmp.passes.calibrate import weight_axis
from onnxmp.passes.insert_qdq import WeightStorage, insert_quantizers
from onnxmp.records import TensorEncoding
from onnxmp.steps import run_passes

WEIGHT_BITS_MAX = encodings_format.BIAS_MIN_BITS - 1  # param encodings above this are int32 biases
MODEL_FILE = "model.qdq.onnx"


def apply_encodings(
    model: str | Path | onnx.ModelProto, encodings_path: str | Path, output_dir: str | Path, *, verify: bool = False
) -> tuple[Path, tuple[str, ...]]:
    """Build the QDQ model of `model` from an AIMET encodings file (ours or AIMET's).

    Returns the model path and the names in the file that the model does not have.

    Raises:
        EncodingsError: the file breaks the schema or does not fit the model (one line
            naming the tensor and the field).
    """
    path = Path(encodings_path)
    _check_not_replaced(path, Path(output_dir))
    loaded = read(path)
    original = model if isinstance(model, onnx.ModelProto) else model_io.load(model)
    canonical = run_passes(original, CANONICALIZE, verify=verify)
    to_canonical = {user: canon for canon, user in encodings_format.original_names(original, canonical).items()}
    unknown = tuple(sorted(n for n in (*loaded.params, *loaded.activations) if n not in to_canonical))
    quantizers = fit(loaded, canonical, to_canonical, str(path))
    qdq = insert_quantizers(canonical, quantizers, weights=WeightStorage.INTEGER)
    folder = Path(output_dir)
    with output_folder.locked(folder), output_folder.staged(folder, OUTPUT_FILES) as staging:
        model_io.save(qdq, staging / MODEL_FILE)  # replaces the folder's previous run, whole
    return folder / MODEL_FILE, unknown


def _check_not_replaced(encodings_path: Path, output_dir: Path) -> None:
    """Refuse to read the encodings from a file that writing `output_dir` would remove."""
    if encodings_path.name in OUTPUT_FILES and encodings_path.resolve().parent == output_dir.resolve():
        raise OutputError(f"{encodings_path}: apply replaces the run in {output_dir}, this file included; choose another -o")


def read(path: Path) -> encodings_format.EncodingSet:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise EncodingsError(f"{path}: cannot read: {e.strerror}") from e
    except UnicodeDecodeError as e:
        raise EncodingsError(f"{path}: not a JSON text file (byte {e.start} is not UTF-8)") from e
    return encodings_format.from_json(text, where=str(path))


def fit(
    loaded: encodings_format.EncodingSet, canonical: onnx.ModelProto, to_canonical: Mapping[str, str], where: str
) -> encodings_format.EncodingSet:
    """The quantizers of the canonical model for every encoding whose tensor it has, each
    checked against that tensor."""
    index = graph.build(canonical)
    initializers = {i.name for i in canonical.graph.initializer}
    weights: dict[str, TensorEncoding] = {}
    biases: dict[str, TensorEncoding] = {}
    activations: dict[str, TensorEncoding] = {}
    for user, enc in loaded.params.items():
        if user in to_canonical:
            name = to_canonical[user]
            _check_param(index, initializers, name, enc, f"{where}: {user}")
            fitted = replace(enc, name=name, axis=_param_axis(index, name, enc, f"{where}: {user}"))
            (biases if enc.bits > WEIGHT_BITS_MAX else weights)[name] = fitted
    for user, enc in loaded.activations.items():
        if user in to_canonical:
            name = to_canonical[user]
            _check_activation(index, name, enc, f"{where}: {user}")
            activations[name] = replace(enc, name=name)
    if not (weights or activations):
        raise EncodingsError(f"{where}: no tensor named in the file exists in the model")
    return encodings_format.EncodingSet(weights, activations, biases)


def _check_float(index: DataflowGraph, name: str, where: str) -> None:
    elem_type = index.elem_types.get(name)
    if elem_type is not None and elem_type != onnx.TensorProto.FLOAT:
        kind = onnx.TensorProto.DataType.Name(elem_type).lower()
        raise EncodingsError(f"{where}: the tensor is {kind}; onnxmp quantizes float32 tensors")


def _check_param(index: DataflowGraph, initializers: set[str], name: str, enc: TensorEncoding, where: str) -> None:
    if name not in initializers:
        raise EncodingsError(f"{where}: in param_encodings, but the model computes this tensor (not a weight)")
    _check_float(index, name, where)
    if not index.consumers(name):
        raise EncodingsError(f"{where}: no op of the model reads this weight")
    if not enc.signed:
        low = -(2 ** (enc.bits - 1))
        raise EncodingsError(
            f"{where}: weights and biases take signed symmetric encodings (is_sym true, offset {low}); "
            f"this one has offset {-enc.zero_point[0]}"
        )


def _param_axis(index: DataflowGraph, name: str, enc: TensorEncoding, where: str) -> int | None:
    """The axis of a per-channel weight (output channels, from the op that reads it) or bias (0);
    the file's scales must match the channels there."""
    shape = index.shapes.get(name, ())
    if enc.axis is None:
        return None
    axis = 0 if enc.bits > WEIGHT_BITS_MAX else weight_axis(index, name)
    channels = shape[axis] if axis is not None and axis < len(shape) else 1
    if axis is None or len(enc.scale) != channels:
        raise EncodingsError(f"{where}: {len(enc.scale)} scales, the tensor has {channels} channels")
    return axis


def _check_activation(index: DataflowGraph, name: str, enc: TensorEncoding, where: str) -> None:
    if index.is_constant(name):
        raise EncodingsError(f"{where}: in activation_encodings, but the tensor is a weight (a constant)")
    _check_float(index, name, where)
    if enc.axis is not None:
        raise EncodingsError(f"{where}: per-channel activation encodings are not supported (one scale per tensor)")
