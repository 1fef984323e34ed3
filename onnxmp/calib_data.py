"""Calibration data: load .npz/.npy or an image folder, check it against the model, batch it.

Why: bad calibration data (NaN, wrong names, shapes or dtypes) silently ruins every range
and every SQNR, so it is rejected up front with a one-line `CalibrationError`.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import math
import tokenize
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from onnxmp import sample_layout
from onnxmp.errors import CalibrationError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
LABEL_KEY = "label"

logger = logging.getLogger(__name__)


class Preprocess(enum.Enum):
    """Named image preprocessing (RGB, NCHW, float32, resize 1/0.875 + center crop)."""

    IMAGENET = "imagenet"  # x/255, torchvision mean/std
    TF = "tf"  # (x - 127) / 128, TF EfficientNet-Lite / MobileNet
    UNIT = "unit"  # x / 255


@dataclass(frozen=True)
class CalibrationSet:
    """Model inputs for calibration, all with the same number of samples.

    `arrays` hold the per-sample inputs with the samples on axis 0, whatever axis of the
    model input holds them (`sample_axes`: that axis where it is not 0; None when each
    sample is one whole feed, run alone). `shared` inputs take one value for every sample
    (a rank-0 sample rate). `run_size` is the number of samples every ONNX Runtime run must
    take when the model fixes it (a static batch dimension): `batches` then ignores the
    size it is asked for.
    """

    arrays: Mapping[str, np.ndarray]
    sample_axes: Mapping[str, int | None] = field(default_factory=dict)
    shared: Mapping[str, np.ndarray] = field(default_factory=dict)
    run_size: int | None = None

    @property
    def num_samples(self) -> int:
        return len(next(iter(self.arrays.values())))

    def starts(self, batch_size: int) -> range:
        """The first sample of each run `batches(batch_size)` yields: callers that pair runs
        with sample indices (seeded sampling, stored chunks) take them from here, so a static
        batch (`run_size`) steps them the same way."""
        return range(0, self.num_samples, self.run_size or batch_size)

    def batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        """Feeds of at most `batch_size` samples (`run_size` when set), in order (deterministic)."""
        size = self.run_size or batch_size
        for start in self.starts(batch_size):
            feeds = {k: self._feed(k, v[start : start + size]) for k, v in self.arrays.items()}
            yield {**feeds, **self.shared}

    def feed_shapes(self) -> dict[str, tuple[int, ...]]:
        """The shape of each input's feed for one run of `run_size` samples (1 when free)."""
        first = {k: v[: self.run_size or 1] for k, v in self.arrays.items()}
        return {k: self._feed(k, v).shape for k, v in first.items()} | {k: v.shape for k, v in self.shared.items()}

    def _feed(self, name: str, chunk: np.ndarray) -> np.ndarray:
        axis = self.sample_axes.get(name, 0)
        if axis is None:  # one whole feed per sample: run_size is 1
            return chunk[0]
        return np.moveaxis(chunk, 0, axis) if axis else chunk

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for name in sorted(self.arrays):
            arr = np.ascontiguousarray(self.arrays[name])
            digest.update(f"{name}:{arr.dtype}:{arr.shape}".encode())
            digest.update(arr.tobytes())
        for name in sorted(self.shared):  # layouts other than the default change the feeds
            digest.update(f"shared {name}:{self.shared[name].dtype}:{self.shared[name].tobytes().hex()}".encode())
        if self.sample_axes or self.run_size:
            digest.update(f"axes {sorted(self.sample_axes.items(), key=str)} run {self.run_size}".encode())
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
    return validate(arrays, inputs, str(path), limit=limit)


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


def validate(
    arrays: Mapping[str, np.ndarray], inputs: Mapping[str, tuple], where: str, *, limit: int | None = None
) -> CalibrationSet:
    """Check names, dtypes, shapes and finiteness of `arrays` against the model's inputs.

    Layouts (README, "Calibration data"): samples on axis 0 of each input by default, or on
    the axis a rank-0 int array `sample_axis/<input>` names; an array with one axis more than
    its input holds one whole feed per sample (run one at a time); a rank-0 array for a
    rank-0 input is one value for every sample. A static dimension at an input's sample axis
    fixes the samples per run (`run_size`); samples beyond a multiple of it are dropped.
    `limit` keeps the first samples only.
    """
    axes = sample_layout.sample_axes(arrays, inputs, where)
    arrays = {k: v for k, v in arrays.items() if not k.startswith(sample_layout.SAMPLE_AXIS_PREFIX)}
    missing = sorted(set(inputs) - set(arrays))
    if missing:
        raise CalibrationError(f"{where}: no data for model input {missing[0]!r} (found: {', '.join(sorted(arrays))})")
    extra = sorted(set(arrays) - set(inputs))
    if extra:
        raise CalibrationError(f"{where}: {extra[0]!r} is not a model input (inputs: {', '.join(inputs)})")
    per_sample, shared, sample_axes, static = {}, {}, {}, {}
    for name, (elem_type, dims) in inputs.items():
        arr = _checked(arrays[name], name, elem_type, where)
        if arr.ndim == 0 and not dims:
            shared[name] = arr
            continue
        axis = None if arr.ndim == len(dims) + 1 else axes.get(name, 0)
        layout = dims if axis is None else (*dims[:axis], *dims[axis + 1 :])
        samples_first = np.moveaxis(arr, axis, 0) if axis and arr.ndim == len(dims) else arr
        if arr.ndim not in (len(dims), len(dims) + 1) or any(
            d is not None and d != s for d, s in zip(layout, samples_first.shape[1:], strict=True)
        ):
            raise CalibrationError(f"{where}: {name}: shape {arr.shape}, model expects {_show(dims)}")
        if samples_first.shape[0] == 0:
            raise CalibrationError(f"{where}: {name}: no samples")
        per_sample[name] = samples_first if limit is None else samples_first[:limit]
        if axis != 0:
            sample_axes[name] = axis
        static[name] = 1 if axis is None else dims[axis]
    if not per_sample:  # rank-0 inputs only: their values are the one sample, one whole feed
        per_sample, sample_axes, static = {k: v[None] for k, v in shared.items()}, dict.fromkeys(shared), dict.fromkeys(shared, 1)
        shared = {}
    kept, run_size = sample_layout.run_size({len(v) for v in per_sample.values()}, static, where)
    per_sample = {k: v if len(v) == kept else v[:kept] for k, v in per_sample.items()}
    return CalibrationSet(per_sample, sample_axes, shared, run_size)


def _checked(arr: np.ndarray, name: str, elem_type: int, where: str) -> np.ndarray:
    """`arr` after the checks that need no layout: dtype, finiteness; warns on a constant input."""
    arr = np.asarray(arr)
    expected = _numeric_dtype(name, elem_type, where)
    if arr.dtype != expected:
        raise CalibrationError(f"{where}: {name}: dtype {arr.dtype}, model expects {expected}")
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)):
            raise CalibrationError(f"{where}: {name}: contains NaN or inf")
        if arr.ndim and arr.size and arr.min() == arr.max():
            logger.warning("%s: %s: every calibration value is %g (zero range): its quantizer learns nothing from this data",
                           where, name, float(arr.flat[0]))
    return arr


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
