"""Load, validate, fingerprint and atomically save ONNX models.

Why: the user's model is read once into a private copy (never modified on disk), bad
files become one-line `ModelError`s, and outputs appear whole or not at all.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import onnx
import onnx.defs
from google.protobuf.message import DecodeError

from onnxmp.errors import ModelError

_PROTOBUF_LIMIT = 2**31 - 1
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
    validate(model, str(path))
    return model


def validate(model: onnx.ModelProto, where: str = "model") -> None:
    """Raise `ModelError` unless every op is known to ONNX and the checker accepts the model."""
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
        if model.ByteSize() < _PROTOBUF_LIMIT:
            onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        raise ModelError(f"{where}: invalid ONNX model: {str(e).splitlines()[0]}") from e


def fingerprint(model: onnx.ModelProto) -> str:
    """sha256 of the serialized model, weights included (deterministic serialization)."""
    digest = hashlib.sha256()
    digest.update(model.SerializeToString(deterministic=True))
    return digest.hexdigest()


def save(model: onnx.ModelProto, path: str | Path) -> Path:
    """Write `model` atomically: a temporary file in the destination folder, then os.replace.

    Models over the 2 GB protobuf limit are saved with their weights as external data
    next to the model (`<name>.data`), written before the final rename.
    """
    path = Path(path)

    def write(tmp: str) -> None:
        if model.ByteSize() >= _PROTOBUF_LIMIT:
            onnx.save_model(
                model, tmp, save_as_external_data=True, all_tensors_to_one_file=True,
                location=f"{path.name}.data", size_threshold=1024,
            )
        else:
            _write_synced(tmp, model.SerializeToString())

    return _atomically(path, write)


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
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
