"""Calibration data: load .npz/.npy or an image folder, check it against the model, batch it.

Why: bad calibration data (NaN, wrong names, shapes or dtypes) silently ruins every range
and every SQNR, so it is rejected up front with a one-line `CalibrationError`.
"""

from __future__ import annotations

import enum
import hashlib
import math
import tokenize
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from onnxmp.errors import CalibrationError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
LABEL_KEY = "label"


class Preprocess(enum.Enum):
    """Named image preprocessing (RGB, NCHW, float32, resize 1/0.875 + center crop)."""

    IMAGENET = "imagenet"  # x/255, torchvision mean/std
    TF = "tf"  # (x - 127) / 128, TF EfficientNet-Lite / MobileNet
    UNIT = "unit"  # x / 255


@dataclass(frozen=True)
class CalibrationSet:
    """Model inputs for calibration, all with the same number of samples."""

    arrays: Mapping[str, np.ndarray]

    @property
    def num_samples(self) -> int:
        return len(next(iter(self.arrays.values())))

    def batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        """Feeds of at most `batch_size` samples, in order (deterministic)."""
        for start in range(0, self.num_samples, batch_size):
            yield {k: v[start : start + batch_size] for k, v in self.arrays.items()}

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for name in sorted(self.arrays):
            arr = np.ascontiguousarray(self.arrays[name])
            digest.update(f"{name}:{arr.dtype}:{arr.shape}".encode())
            digest.update(arr.tobytes())
        return digest.hexdigest()


def model_inputs(model: onnx.ModelProto) -> dict[str, tuple[int, tuple]]:
    """Non-initializer graph inputs: name -> (elem_type, dims with None for symbolic)."""
    inits = {i.name for i in model.graph.initializer}
    result = {}
    for info in model.graph.input:
        if info.name in inits:
            continue
        ttype = info.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in ttype.shape.dim)
        result[info.name] = (ttype.elem_type, dims)
    return result


def load_arrays(path: str | Path, model: onnx.ModelProto, *, limit: int | None = None) -> CalibrationSet:
    """Load `.npz` (keyed by input name) or `.npy` (single-input models) and validate it.

    Extra keys named `label` are ignored here (they belong to evaluation data).
    """
    path = Path(path)
    inputs = model_inputs(model)
    _check_tensor_inputs(model, str(path))
    if path.suffix == ".npy" and len(inputs) != 1:
        raise CalibrationError(f"{path}: a .npy file fits one-input models; this model has {len(inputs)}")
    try:
        if path.suffix == ".npy":
            arrays = {next(iter(inputs)): np.load(path, allow_pickle=False)}
        else:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files if k != LABEL_KEY}
    except _UNREADABLE as e:
        raise CalibrationError(f"{path}: cannot read calibration data: {_why(e)}") from e
    if limit is not None:
        arrays = {k: v[:limit] for k, v in arrays.items()}
    return validate(arrays, inputs, str(path))


# what numpy raises on a damaged .npz/.npy: a truncated zip, a bad CRC or deflate stream,
# a mangled header, a shape larger than memory
_UNREADABLE = (
    OSError, ValueError, EOFError, KeyError, MemoryError, SyntaxError,
    zipfile.BadZipFile, zlib.error, tokenize.TokenError,
)


def _why(error: BaseException) -> str:
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    if "allow_pickle" in text:
        return "it holds Python objects (pickled data), not numeric arrays"
    if isinstance(error, zipfile.BadZipFile):
        return f"not a complete .npz file (truncated or damaged: {text})"
    return text


def _check_tensor_inputs(model: onnx.ModelProto, where: str) -> None:
    """Refuse models with an input calibration cannot feed (strings, sequences, maps) before
    reading the file, whose arrays for such inputs could only be pickled objects."""
    for name, (elem_type, _) in model_inputs(model).items():
        _numeric_dtype(name, elem_type, where)


def validate(arrays: Mapping[str, np.ndarray], inputs: Mapping[str, tuple], where: str) -> CalibrationSet:
    """Check names, dtypes, shapes and finiteness of `arrays` against the model's inputs."""
    missing = sorted(set(inputs) - set(arrays))
    if missing:
        raise CalibrationError(f"{where}: no data for model input {missing[0]!r} (found: {', '.join(sorted(arrays))})")
    extra = sorted(set(arrays) - set(inputs))
    if extra:
        raise CalibrationError(f"{where}: {extra[0]!r} is not a model input (inputs: {', '.join(inputs)})")
    counts = set()
    for name, (elem_type, dims) in inputs.items():
        arr = np.asarray(arrays[name])
        expected = _numeric_dtype(name, elem_type, where)
        if arr.dtype != expected:
            raise CalibrationError(f"{where}: {name}: dtype {arr.dtype}, model expects {expected}")
        if arr.ndim != len(dims) or any(d is not None and d != s for d, s in zip(dims[1:], arr.shape[1:], strict=True)):
            raise CalibrationError(f"{where}: {name}: shape {arr.shape}, model expects {_show(dims)}")
        if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
            raise CalibrationError(f"{where}: {name}: contains NaN or inf")
        if arr.shape[0] == 0:
            raise CalibrationError(f"{where}: {name}: no samples")
        counts.add(arr.shape[0])
    if len(counts) > 1:
        raise CalibrationError(f"{where}: inputs have different sample counts {sorted(counts)}")
    return CalibrationSet({k: arrays[k] for k in inputs})


def _numeric_dtype(name: str, elem_type: int, where: str) -> np.dtype:
    if elem_type == onnx.TensorProto.STRING:
        raise CalibrationError(f"{where}: input {name!r} is a string input, nothing to quantize")
    try:
        return helper.tensor_dtype_to_np_dtype(elem_type)
    except KeyError:
        raise CalibrationError(f"{where}: input {name!r} is not a tensor; onnxmp calibrates tensor inputs only") from None


def check_finite_ranges(ranges: Mapping[str, tuple[float, float]]) -> None:
    """Refuse calibration data that drives an activation to inf or NaN, naming the first
    such tensor of `ranges` (give them in graph order: later ones only inherit the overflow).

    Why: finite inputs can still overflow float32 inside the network (values near 1e38 in
    a Conv); every range and SQNR computed from them would be meaningless.
    """
    for tensor, (low, high) in ranges.items():
        if not (math.isfinite(low) and math.isfinite(high)):
            raise CalibrationError(
                f"calibration data: tensor {tensor!r} overflows float32 (range {low}..{high}); "
                "the inputs are too large for this model: scale them down"
            )


def _show(dims: tuple) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


def load_images(
    folder: str | Path, model: onnx.ModelProto, preprocess: Preprocess, *, limit: int | None = None
) -> CalibrationSet:
    """The first `limit` images of `folder` (sorted by name), preprocessed for the model's input."""
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
    if not files:
        raise CalibrationError(f"{folder}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found")
    inputs = model_inputs(model)
    if len(inputs) != 1:
        raise CalibrationError(f"{folder}: image calibration needs a one-input model; this one has {len(inputs)}")
    name, (_, dims) = next(iter(inputs.items()))
    if len(dims) != 4 or dims[1] != 3 or dims[2] is None:
        raise CalibrationError(f"{folder}: input {name!r} is {_show(dims)}, not an NCHW RGB image batch")
    batch = np.stack([preprocess_image(p, dims[2], preprocess) for p in files[:limit]])
    return validate({name: batch}, inputs, str(folder))


def preprocess_image(path: Path, size: int, preprocess: Preprocess) -> np.ndarray:
    """Resize the shorter side to round(size/0.875) (bilinear), center-crop, normalize, CHW."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            rgb = img.convert("RGB")
    except OSError as e:
        raise CalibrationError(f"{path}: not a readable image") from e
    short = round(size / 0.875)
    w, h = rgb.size
    scale = short / min(w, h)
    rgb = rgb.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.Resampling.BILINEAR)
    w, h = rgb.size
    left, top = (w - size) // 2, (h - size) // 2
    x: np.ndarray = np.asarray(rgb.crop((left, top, left + size, top + size)), dtype=np.float32)
    if preprocess is Preprocess.TF:
        x = (x - 127.0) / 128.0
    elif preprocess is Preprocess.IMAGENET:
        x = (x / 255.0 - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32)
    else:
        x = x / 255.0
    return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)
