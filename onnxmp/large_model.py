"""Large models: size limits, weightless copies, and packing for other processes.

Why: models whose weights pass the 2 GB protobuf limit cannot be serialized whole, and
serializing large ones costs a second copy of every weight, so code that hands a model to
C++ (checker, shape inference, version converter, ONNX Runtime) gives it a *weightless*
copy: the big initializers keep name, type and dims and point at external data, and the
weights travel separately (`weightless`, `restore_weights`, `pack`).

The byte thresholds that switch these paths are one record, `SizeLimits`, passed as the
keyword `limits`; `None` means `DEFAULT_LIMITS` (the real limits), read when called so
that callers which do not pass limits yet (the pipeline) follow a test that lowers them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, MutableSequence, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from google.protobuf.message import Message
from onnx import numpy_helper

IN_MEMORY = "__onnxmp_in_memory__"  # external-data location of a weight held by the caller
_VECTOR_INLINE_BELOW = 64 * 2**10  # bytes; smaller tensors of rank <= 1 may be shapes or scales


@dataclass(frozen=True)
class SizeLimits:
    """Byte thresholds that decide how a model travels; tests lower them to take the large paths.

    >>> SizeLimits().protobuf == 2**31 - 1, SizeLimits(large_weights=0).weight_min_bytes
    (True, 1024)
    """

    protobuf: int = 2**31 - 1  # a model this large is saved with its weights as external data
    large_weights: int = 256 * 2**20  # bytes of initializers from which C++ gets a weightless copy
    weight_min_bytes: int = 1024  # smaller initializers stay inline in weightless copies (onnx's default)


DEFAULT_LIMITS = SizeLimits()


def _resolved(limits: SizeLimits | None) -> SizeLimits:
    return DEFAULT_LIMITS if limits is None else limits


def over_protobuf_limit(model: onnx.ModelProto, *, limits: SizeLimits | None = None) -> bool:
    """Whether `model` serializes to `limits.protobuf` bytes or more (never underestimated).

    Not `model.ByteSize()`: protobuf's upb backend serializes the message to size it (a copy
    of every weight) and refuses over 2 GB.
    """
    limits = _resolved(limits)
    tensors = weights(model, limits=limits)
    return weightless(model, tensors).ByteSize() + sum(nbytes(t) for t in tensors) >= limits.protobuf


def is_large(model: onnx.ModelProto, *, limits: SizeLimits | None = None) -> bool:
    """True when the initializers hold `limits.large_weights` bytes or more: C++ then gets a weightless copy."""
    return sum(nbytes(t) for t in model.graph.initializer) >= _resolved(limits).large_weights


def large_weights(model: onnx.ModelProto, *, limits: SizeLimits | None = None) -> list[onnx.TensorProto]:
    """`weights(model)` when `model` is large, else none: what a pass hands C++ without.

    The guard of every pass that gives a large model to C++ as a weightless copy and puts
    the weights back afterwards (`restore_weights`).
    """
    return weights(model, limits=limits) if is_large(model, limits=limits) else []


def weights(
    model: onnx.ModelProto, *, min_bytes: int | None = None, limits: SizeLimits | None = None
) -> list[onnx.TensorProto]:
    """The graph initializers a weightless copy leaves out, in graph order (the model's own protos).

    Those of `min_bytes` (default `limits.weight_min_bytes`) or more whose data is inline (in
    `raw_data` or a typed field such as `int32_data`), strings excepted.
    Tensors of rank 0 or 1 under 64 KiB always stay inline: they may be shapes, pads, axes or
    Resize scales, whose values shape inference and ONNX Runtime read while resolving the graph.
    """
    least = _resolved(limits).weight_min_bytes if min_bytes is None else min_bytes
    return [
        t for t in model.graph.initializer
        if t.data_location != onnx.TensorProto.EXTERNAL and t.data_type != onnx.TensorProto.STRING
        and (size := nbytes(t)) >= least
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
        set_external(stub, location)
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


def pack(model: onnx.ModelProto, *, limits: SizeLimits | None = None) -> PackedModel:
    """`model` as bytes; a large one (`is_large`) as a weightless copy plus its weights as arrays.

    pickle and Ray move numpy arrays as they are (no serialization over 2 GB, no bytes
    object holding every weight a second time); `unpack` puts them back bit for bit.
    """
    if not is_large(model, limits=limits):
        return PackedModel(model.SerializeToString(), {})
    # numpy's own dtypes only (isbuiltin 1): ONNX Runtime takes no OrtValue of bfloat16,
    # float8 or int4 arrays, so those weights stay inline
    tensors = [t for t in weights(model, limits=limits) if onnx.helper.tensor_dtype_to_np_dtype(t.data_type).isbuiltin == 1]
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


def nbytes(tensor: onnx.TensorProto) -> int:
    """Bytes of the tensor's data, at least: `raw_data` sized from dims and type, since
    `ByteSize()` serializes under upb (sub-byte types count a byte an element)."""
    if not tensor.HasField("raw_data") or tensor.data_type not in onnx.helper.get_all_tensor_dtypes():
        return tensor.ByteSize()  # typed fields hold varints: only the encoding knows their size
    return math.prod(tensor.dims) * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize


def raw_bytes(tensor: onnx.TensorProto) -> bytes:
    """The tensor's data as external data stores it (typed fields converted through numpy)."""
    if tensor.HasField("raw_data"):
        return tensor.raw_data
    return numpy_helper.from_array(numpy_helper.to_array(tensor)).raw_data


def set_external(stub: onnx.TensorProto, location: str, **fields: int) -> None:
    stub.data_location = onnx.TensorProto.EXTERNAL
    del stub.external_data[:]
    for key, value in {"location": location, **fields}.items():
        stub.external_data.add(key=key, value=str(value))
