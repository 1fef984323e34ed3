"""Load, validate, fingerprint and atomically save ONNX models.

Why: the user's model is read once into a private copy (never modified on disk), bad
files become one-line `ModelError`s, and outputs appear whole or not at all. A large
model is checked, hashed and saved without a serialization of all its weights: see
`onnxmp.large_model`, whose names this module re-exports for its older callers.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import onnx
import onnx.defs
from google.protobuf.message import DecodeError

from onnxmp import files
from onnxmp.errors import ModelError, first_line
from onnxmp.large_model import (
    DEFAULT_LIMITS,
    IN_MEMORY,
    PackedModel,
    SizeLimits,
    is_large,
    is_stub,
    over_protobuf_limit,
    pack,
    raw_bytes,
    restore_weights,
    set_external,
    unpack,
    weightless,
    weights,
)

_ALIGNMENT = 4096  # external data offsets of tensors this large or larger (lets ORT mmap them)
_KNOWN_CUSTOM_DOMAINS = {"com.microsoft"}

__all__ = [  # load/save here; the large-model names stay importable from model_io
    "DEFAULT_LIMITS", "IN_MEMORY", "PackedModel", "SizeLimits", "fingerprint", "is_large", "is_stub",
    "load", "pack", "restore_weights", "save", "unpack", "validate", "weightless", "weights", "write_text",
]


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
    except onnx.checker.ValidationError as e:  # external data outside the folder, a symlink, missing
        raise ModelError(f"{path}: refused external data: {str(e).strip()}") from e  # names escaped
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


def validate(model: onnx.ModelProto, where: str = "model", *, limits: SizeLimits | None = None) -> None:
    """Raise `ModelError` unless every op is known to ONNX and the checker accepts the model.

    A large model (`is_large`) is checked without its weights, which the checker would
    otherwise serialize (impossible over 2 GB).
    """
    for node in model.graph.node:
        domain = node.domain or ""
        if domain in _KNOWN_CUSTOM_DOMAINS:
            continue
        if not _known_op(node.op_type, domain):
            raise ModelError(
                f"{where}: node {node.name or next(iter(node.output), '')!r}: unknown op {node.op_type!r}"
                + (f" in domain {domain!r}" if domain else "")
            )
    try:
        onnx.checker.check_model(_checkable(model) if is_large(model, limits=limits) else model)
    except onnx.checker.ValidationError as e:
        raise ModelError(f"{where}: invalid ONNX model: {first_line(e)}") from e
    except UnicodeDecodeError as e:  # the checker's own message quotes a corrupt (non-UTF-8) name
        raise ModelError(f"{where}: invalid ONNX model: a name or string is not UTF-8 text (corrupt file?)") from e


def _known_op(op_type, domain) -> bool:
    """Whether ONNX defines the op; False for names that are not text (corrupt files)."""
    try:
        return onnx.defs.has(op_type, domain)
    except TypeError:  # a name protobuf could not decode as UTF-8 comes back as bytes
        return False


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


def save(model: onnx.ModelProto, path: str | Path, *, limits: SizeLimits | None = None) -> Path:
    """Write `model` atomically: a temporary file in the destination folder, then os.replace.

    Models over the 2 GB protobuf limit (`limits.protobuf`) are saved with their weights as external data
    next to the model (`<name>.data`, one tensor at a time straight from the model, no copy
    of all weights); both files are written to temporaries first, then the data file and
    last the model are moved into place. `model` itself is never modified.
    """
    path = Path(path)
    if not over_protobuf_limit(model, limits=limits):
        return _atomically(path, lambda tmp: _write_synced(tmp, model.SerializeToString()))
    data_path = path.with_name(f"{path.name}.data")
    tensors = weights(model, limits=limits)
    copy = weightless(model, tensors, location=data_path.name)
    stubs = {t.name: t for t in copy.graph.initializer}
    path.parent.mkdir(parents=True, exist_ok=True)
    with _temporary(data_path) as data_tmp, _temporary(path) as model_tmp:
        with open(data_tmp, "wb") as f:
            for tensor in tensors:
                data = raw_bytes(tensor)
                if len(data) >= _ALIGNMENT:
                    f.seek(-f.tell() % _ALIGNMENT, os.SEEK_CUR)
                set_external(stubs[tensor.name], data_path.name, offset=f.tell(), length=len(data))
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        _write_synced(model_tmp, copy.SerializeToString())
        os.replace(data_tmp, data_path)
        os.replace(model_tmp, path)
    return path


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
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=files.TEMPORARY_SUFFIX)
    os.fchmod(fd, files.user_mode())  # mkstemp makes 0600; outputs follow the user's umask
    os.close(fd)
    try:
        yield tmp
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
