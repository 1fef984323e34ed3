"""Load, validate, fingerprint and atomically save ONNX models; weightless copies of large ones.

Why: the user's model is read once into a private copy (never modified on disk), bad
files become one-line `ModelError`s, and outputs appear whole or not at all. Models whose
weights pass the 2 GB protobuf limit cannot be serialized whole, and serializing large ones
costs a second copy of every weight, so code that hands a model to C++ (checker, shape
inference, version converter, ONNX Runtime) gives it a *weightless* copy: the big
initializers keep name, type and dims and point at external data, and the weights travel
separately (`weightless`, `restore_weights`).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import tempfile
from collections.abc import Iterator, Mapping, MutableSequence, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx.defs
from google.protobuf.message import DecodeError, Message
from onnx import numpy_helper

from onnxmp.errors import ModelError

PROTOBUF_LIMIT = 2**31 - 1  # bytes; a larger model is saved with its weights as external data
LARGE_WEIGHTS = 256 * 2**20  # bytes of initializers from which C++ gets a weightless copy
WEIGHT_MIN_BYTES = 1024  # smaller initializers stay inline in weightless copies (onnx's default)
IN_MEMORY = "__onnxmp_in_memory__"  # external-data location of a weight held by the caller
_ALIGNMENT = 4096  # external data offsets of tensors this large or larger (lets ORT mmap them)
_VECTOR_INLINE_BELOW = 64 * 2**10  # bytes; smaller tensors of rank <= 1 may be shapes or scales
_KNOWN_CUSTOM_DOMAINS = {"com.microsoft"}


def load(path: str | Path) -> onnx.ModelProto:
    """Read a model (and its external data) and check it is a valid, known-op ONNX graph.

    Raises:
        ModelError: missing, truncated, corrupt or non-ONNX file; a model the ONNX checker
            rejects; a node whose op type ONNX does not define.
    """
    path = Path(path)
    try:
        model = onnx.load(str(path), load_external_data=True)
    except FileNotFoundError as e:
        raise ModelError(f"{path}: file not found ({e.filename})") from e
    except (DecodeError, RuntimeError, ValueError, UnicodeDecodeError) as e:
        raise ModelError(f"{path}: not a readable ONNX model (corrupt or truncated file)") from e
    except OSError as e:
        raise ModelError(f"{path}: cannot read: {e.strerror}") from e
    if not model.graph.node:
        raise ModelError(f"{path}: not an ONNX model (no graph nodes)")
    for tensor in model.graph.initializer:  # onnx.load marks loaded external data DEFAULT: unmark
        if tensor.HasField("data_location") and tensor.data_location == onnx.TensorProto.DEFAULT:
            tensor.ClearField("data_location")
    validate(model, str(path))
    return model


def validate(model: onnx.ModelProto, where: str = "model") -> None:
    """Raise `ModelError` unless every op is known to ONNX and the checker accepts the model.

    A large model (`is_large`) is checked without its weights, which the checker would
    otherwise serialize (impossible over 2 GB).
    """
    for node in model.graph.node:
        domain = node.domain or ""
        if domain in _KNOWN_CUSTOM_DOMAINS:
            continue
        if not onnx.defs.has(node.op_type, domain):
            raise ModelError(
                f"{where}: node {node.name or node.output[0]!r}: unknown op {node.op_type!r}"
                + (f" in domain {domain!r}" if domain else "")
            )
    try:
        onnx.checker.check_model(_checkable(model) if is_large(model) else model)
    except onnx.checker.ValidationError as e:
        raise ModelError(f"{where}: invalid ONNX model: {str(e).splitlines()[0]}") from e


def _checkable(model: onnx.ModelProto) -> onnx.ModelProto:
    """A weightless copy the checker accepts: each weight an empty tensor of its type.

    Without `full_check` the checker reads neither the dims nor the data of an initializer,
    only that it is well formed (an external one must name a file that exists).
    """
    copy = weightless(model, weights(model, min_bytes=0))
    for stub in copy.graph.initializer:
        if is_stub(stub):
            stub.ClearField("data_location")
            del stub.external_data[:]
            stub.dims[:] = [0]
    return copy


def fingerprint(model: onnx.ModelProto) -> str:
    """sha256 of the model, weights included, streamed: never a serialization over 2 GB.

    Hashed in order, each part prefixed by its length: the weightless structure (names,
    types, dims), then each weight in initializer order, one at a time: its `raw_data`, or
    the deterministic serialization of a tensor with typed fields.
    """
    digest = hashlib.sha256()
    tensors = weights(model, min_bytes=0)
    _hash_part(digest, b"s", weightless(model, tensors).SerializeToString(deterministic=True))
    for tensor in tensors:  # one weight at a time is copied out of the model
        if tensor.HasField("raw_data"):
            _hash_part(digest, b"r", tensor.raw_data)
        else:
            _hash_part(digest, b"t", tensor.SerializeToString(deterministic=True))
    return digest.hexdigest()


def _hash_part(digest, kind: bytes, part: bytes) -> None:
    digest.update(kind + len(part).to_bytes(8, "little"))
    digest.update(part)


def save(model: onnx.ModelProto, path: str | Path) -> Path:
    """Write `model` atomically: a temporary file in the destination folder, then os.replace.

    Models over the 2 GB protobuf limit are saved with their weights as external data
    next to the model (`<name>.data`, one tensor at a time straight from the model, no copy
    of all weights); both files are written to temporaries first, then the data file and
    last the model are moved into place. `model` itself is never modified.
    """
    path = Path(path)
    if not _over_limit(model):
        return _atomically(path, lambda tmp: _write_synced(tmp, model.SerializeToString()))
    data_path = path.with_name(f"{path.name}.data")
    tensors = weights(model)
    copy = weightless(model, tensors, location=data_path.name)
    stubs = {t.name: t for t in copy.graph.initializer}
    path.parent.mkdir(parents=True, exist_ok=True)
    with _temporary(data_path) as data_tmp, _temporary(path) as model_tmp:
        with open(data_tmp, "wb") as f:
            for tensor in tensors:
                data = _raw_bytes(tensor)
                if len(data) >= _ALIGNMENT:
                    f.seek(-f.tell() % _ALIGNMENT, os.SEEK_CUR)
                _set_external(stubs[tensor.name], data_path.name, offset=f.tell(), length=len(data))
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        _write_synced(model_tmp, copy.SerializeToString())
        os.replace(data_tmp, data_path)
        os.replace(model_tmp, path)
    return path


def _over_limit(model: onnx.ModelProto) -> bool:
    """Whether `model` serializes to `PROTOBUF_LIMIT` bytes or more (never underestimated).

    Not `model.ByteSize()`: protobuf's upb backend serializes the message to size it (a copy
    of every weight) and refuses over 2 GB.
    """
    tensors = weights(model)
    return weightless(model, tensors).ByteSize() + sum(_nbytes(t) for t in tensors) >= PROTOBUF_LIMIT


def is_large(model: onnx.ModelProto) -> bool:
    """True when the initializers hold `LARGE_WEIGHTS` bytes or more: C++ then gets a weightless copy."""
    return sum(_nbytes(t) for t in model.graph.initializer) >= LARGE_WEIGHTS


def weights(model: onnx.ModelProto, *, min_bytes: int | None = None) -> list[onnx.TensorProto]:
    """The graph initializers a weightless copy leaves out, in graph order (the model's own protos).

    Those of `min_bytes` (default `WEIGHT_MIN_BYTES`) or more whose data is inline (in
    `raw_data` or a typed field such as `int32_data`), strings excepted.
    Tensors of rank 0 or 1 under 64 KiB always stay inline: they may be shapes, pads, axes or
    Resize scales, whose values shape inference and ONNX Runtime read while resolving the graph.
    """
    least = WEIGHT_MIN_BYTES if min_bytes is None else min_bytes
    return [
        t for t in model.graph.initializer
        if t.data_location != onnx.TensorProto.EXTERNAL and t.data_type != onnx.TensorProto.STRING
        and (size := _nbytes(t)) >= least
        and not (len(t.dims) <= 1 and size < _VECTOR_INLINE_BELOW)
    ]


def weightless(model: onnx.ModelProto, tensors: Sequence[onnx.TensorProto], *, location: str = IN_MEMORY) -> onnx.ModelProto:
    """A copy of `model` whose initializers named in `tensors` keep name, type and dims but no data.

    Each is marked as external data at `location`; nothing of the weights is copied.
    """
    names = {t.name for t in tensors}
    copy = onnx.ModelProto()
    _copy_fields(model, copy, skip="graph")
    _copy_fields(model.graph, copy.graph, skip="initializer")
    for tensor in model.graph.initializer:
        if tensor.name not in names:
            copy.graph.initializer.append(tensor)
            continue
        stub = copy.graph.initializer.add(name=tensor.name, dims=tensor.dims, data_type=tensor.data_type)
        if tensor.HasField("doc_string"):
            stub.doc_string = tensor.doc_string
        _set_external(stub, location)
    return copy


def restore_weights(model: onnx.ModelProto, tensors: Sequence[onnx.TensorProto]) -> onnx.ModelProto:
    """Put `tensors` back in place of their in-memory stubs in `model` (edited in place: a copy you own)."""
    by_name = {t.name: t for t in tensors}
    for stub in model.graph.initializer:
        if stub.name in by_name and is_stub(stub):
            stub.CopyFrom(by_name[stub.name])
    return model


@dataclass(frozen=True)
class PackedModel:
    """A model on its way to another process (a pool worker, a Ray task): see `pack`."""

    structure: bytes  # the serialized model, weightless when `weights` is not empty
    weights: Mapping[str, np.ndarray]  # a large model's weights by initializer name, else empty


def pack(model: onnx.ModelProto) -> PackedModel:
    """`model` as bytes; a large one (`is_large`) as a weightless copy plus its weights as arrays.

    pickle and Ray move numpy arrays as they are (no serialization over 2 GB, no bytes
    object holding every weight a second time); `unpack` puts them back bit for bit.
    """
    if not is_large(model):
        return PackedModel(model.SerializeToString(), {})
    # numpy's own dtypes only (isbuiltin 1): ONNX Runtime takes no OrtValue of bfloat16,
    # float8 or int4 arrays, so those weights stay inline
    tensors = [t for t in weights(model) if onnx.helper.tensor_dtype_to_np_dtype(t.data_type).isbuiltin == 1]
    arrays = {t.name: numpy_helper.to_array(t) for t in tensors}
    return PackedModel(weightless(model, tensors).SerializeToString(), arrays)


def unpack(packed: PackedModel) -> onnx.ModelProto:
    """The model `pack` packed, weights in place (raw data; a stub's doc_string is kept)."""
    model = onnx.load_from_string(packed.structure)
    for stub in model.graph.initializer:
        if stub.name in packed.weights and is_stub(stub):
            tensor = numpy_helper.from_array(packed.weights[stub.name], stub.name)
            if stub.HasField("doc_string"):
                tensor.doc_string = stub.doc_string
            stub.CopyFrom(tensor)
    return model


def is_stub(tensor: onnx.TensorProto) -> bool:
    """Whether `tensor` is a stub of `weightless`, whose data the caller holds."""
    return tensor.data_location == onnx.TensorProto.EXTERNAL and tensor.external_data[0].value == IN_MEMORY


def _copy_fields(source, target, *, skip: str) -> None:
    """Copy every set field of the message `source` into `target` except `skip`."""
    for field, value in source.ListFields():
        if field.name == skip:
            continue
        if isinstance(value, MutableSequence):  # a repeated field
            getattr(target, field.name).extend(value)
        elif isinstance(value, Message):
            getattr(target, field.name).CopyFrom(value)
        else:
            setattr(target, field.name, value)


def _nbytes(tensor: onnx.TensorProto) -> int:
    """Bytes of the tensor's data, at least: `raw_data` sized from dims and type, since
    `ByteSize()` serializes under upb (sub-byte types count a byte an element)."""
    if not tensor.HasField("raw_data") or tensor.data_type not in onnx.helper.get_all_tensor_dtypes():
        return tensor.ByteSize()  # typed fields hold varints: only the encoding knows their size
    return math.prod(tensor.dims) * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize


def _raw_bytes(tensor: onnx.TensorProto) -> bytes:
    """The tensor's data as external data stores it (typed fields converted through numpy)."""
    if tensor.HasField("raw_data"):
        return tensor.raw_data
    return numpy_helper.from_array(numpy_helper.to_array(tensor)).raw_data


def _set_external(stub: onnx.TensorProto, location: str, **fields: int) -> None:
    stub.data_location = onnx.TensorProto.EXTERNAL
    del stub.external_data[:]
    for key, value in {"location": location, **fields}.items():
        stub.external_data.add(key=key, value=str(value))


def write_text(text: str, path: str | Path) -> Path:
    """Write a text file atomically (same rule as `save`)."""
    return _atomically(Path(path), lambda tmp: _write_synced(tmp, text.encode()))


def _write_synced(tmp: str, data: bytes) -> None:
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _atomically(path: Path, write) -> Path:
    """Run `write(tmp)` on a temporary file beside `path`, then move it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with _temporary(path) as tmp:
        write(tmp)
        os.replace(tmp, path)
    return path


@contextlib.contextmanager
def _temporary(path: Path) -> Iterator[str]:
    """A temporary file name beside `path`; the file is removed on exit unless moved away."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
