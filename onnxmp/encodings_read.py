"""Reading an AIMET encodings file strictly: every field checked before anything is built.

Why: an encodings file comes from another tool or a hand edit; a bit-width of 0 or 33, an
infinite scale, an offset off its grid or a tensor listed twice used to build a model that
ran at chance level, or that ONNX Runtime refused, or crashed with an OverflowError. Each is
refused here with one line naming the section, the tensor and the field.

AIMET's integer convention (see `onnxmp.encodings`): x_int = round(x / scale) - offset on
[0, 2^bw - 1], so offsets lie in [-(2^bw - 1), 0]; -2^(bw-1) marks a signed symmetric grid.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping

import numpy as np

from onnxmp import strict
from onnxmp.errors import EncodingsError
from onnxmp.records import Grid, TensorEncoding

FORMATS = ("1.0.0", "0.6.1")
SECTIONS = ("param_encodings", "activation_encodings")
TOP_KEYS = {"version", "activation_encodings", "param_encodings", "excluded_layers", "quantizer_args"}
V1_KEYS = {"name", "dtype", "enc_type", "is_sym", "bw", "scale", "offset", "block_size", "compressed_bw"}
V061_KEYS = {"bitwidth", "dtype", "is_symmetric", "max", "min", "offset", "scale"}
ACTIVATION_BITS = range(2, 17)
BIAS_BITS = 32  # int32 biases, in the param section only


class _FieldError(ValueError):
    """A field that breaks the schema; the message starts with the field's path."""


def parse(text: str, where: str) -> dict[str, dict[str, TensorEncoding]]:
    """{section: {tensor name: encoding}} of an AIMET 1.0.0 or 0.6.1 file (layout decides)."""
    data = _load(text, where)
    if not isinstance(data, dict) or not (set(SECTIONS) & set(data)):
        raise EncodingsError(f"{where}: no activation_encodings or param_encodings")
    strict.check_keys(data, TOP_KEYS, f"{where}: ", EncodingsError)
    layouts = {type(data.get(s)).__name__ for s in SECTIONS if data.get(s)}
    if not layouts <= {"list", "dict"}:
        raise EncodingsError(f"{where}: {_first_bad_section(data)}: expected a list (1.0.0) or a mapping (0.6.1)")
    if len(layouts) > 1:
        raise EncodingsError(f"{where}: one section is a list (1.0.0) and the other a mapping (0.6.1)")
    version = "0.6.1" if layouts == {"dict"} else "1.0.0"
    if "version" in data and data["version"] != version:
        raise EncodingsError(f"{where}: version: {_show(data['version'])}, but the sections have the {version} layout")
    result = {}
    for section in SECTIONS:
        try:
            result[section] = _section(data.get(section), section, version)
        except _FieldError as e:
            raise EncodingsError(f"{where}: {section}: {e}") from None
    both = sorted(set(result["param_encodings"]) & set(result["activation_encodings"]))
    if both:
        raise EncodingsError(f"{where}: {both[0]!r} is in both param_encodings and activation_encodings")
    return result


def _first_bad_section(data: Mapping) -> str:
    return next(s for s in SECTIONS if data.get(s) and not isinstance(data[s], (list, dict)))


def _load(text: str, where: str) -> object:
    try:
        return json.loads(text, object_pairs_hook=_unique_keys)
    except _FieldError as e:
        raise EncodingsError(f"{where}: {e}") from None
    except ValueError as e:  # JSONDecodeError, or an integer of more than 4300 digits
        raise EncodingsError(f"{where}: not JSON: {str(e).splitlines()[0]}") from e
    except RecursionError:
        raise EncodingsError(f"{where}: not JSON: nested too deeply") from None


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    """A JSON object whose keys appear once (twice with one value is tolerated)."""
    result: dict = {}
    for key, value in pairs:
        if key in result and result[key] != value:
            raise _FieldError(f"{key!r} appears twice in one object, with different values")
        result[key] = value
    return result


def _section(value: object, section: str, version: str) -> dict[str, TensorEncoding]:
    params = section == "param_encodings"
    result: dict[str, TensorEncoding] = {}
    if not value:
        return result
    named: list[tuple[str, object]]
    if isinstance(value, list):  # 1.0.0
        named = [(_v1_name(entry, i), entry) for i, entry in enumerate(value)]
    elif isinstance(value, dict):  # 0.6.1
        named = list(value.items())
        if "" in value:
            raise _FieldError("'': expected a tensor name")
    else:
        raise _FieldError(f"expected a list (1.0.0) or a mapping (0.6.1), got {_kind(value)}")
    for name, entry in named:
        try:
            encoding = _from_v1(name, entry, params) if version == "1.0.0" else _from_v061(name, entry, params)
        except _FieldError as e:
            raise _FieldError(f"{name}: {e}") from None
        if name in result and result[name] != encoding:
            raise _FieldError(f"{name}: two entries with different values")
        result[name] = encoding
    return result


def _v1_name(entry: object, index: int) -> str:
    if not isinstance(entry, dict):
        raise _FieldError(f"[{index}]: expected an object with name, bw, scale, offset, got {type(entry).__name__}")
    name = entry.get("name")
    if not isinstance(name, str) or not name:
        raise _FieldError(f"[{index}]: name: expected a tensor name, got {_show(name)}")
    return name


def _from_v1(name: str, entry: object, params: bool) -> TensorEncoding:
    if not isinstance(entry, dict):  # `_v1_name` checked it already
        raise _FieldError(f"expected an object, got {_kind(entry)}")
    _keys(entry, V1_KEYS, {"name", "bw", "is_sym", "scale", "offset"})
    _integer_dtype(entry.get("dtype", "INT"))
    enc_type = entry.get("enc_type", "PER_TENSOR")
    if enc_type not in ("PER_TENSOR", "PER_CHANNEL"):
        raise _FieldError(f"enc_type: {_show(enc_type)} is not supported (PER_TENSOR or PER_CHANNEL)")
    bits = _bits(entry["bw"], "bw", params)
    if not isinstance(entry["is_sym"], bool):
        raise _FieldError(f"is_sym: expected true or false, got {_show(entry['is_sym'])}")
    scales, offsets = _list(entry["scale"], "scale"), _list(entry["offset"], "offset")
    if enc_type == "PER_TENSOR" and len(scales) != 1:
        raise _FieldError(f"scale: PER_TENSOR takes one scale, got {len(scales)}")
    return _encoding(name, bits, entry["is_sym"], scales, offsets, per_channel=enc_type == "PER_CHANNEL")


def _from_v061(name: str, entries: object, params: bool) -> TensorEncoding:
    if not isinstance(entries, list):
        raise _FieldError(f"expected a list of per-channel encodings, got {_kind(entries)}")
    if not entries:
        raise _FieldError("no encodings")
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise _FieldError(f"[{i}]: expected an object with bitwidth, scale, offset, got {_kind(entry)}")
        _keys(entry, V061_KEYS, {"bitwidth", "scale", "offset"})
        _integer_dtype(entry.get("dtype", "int"))
        for key in ("min", "max"):
            if key in entry and (isinstance(entry[key], bool) or not isinstance(entry[key], (int, float))):
                raise _FieldError(f"[{i}]: {key}: expected a number, got {_show(entry[key])}")
    shared = {k: [e.get(k) for e in entries] for k in ("bitwidth", "is_symmetric", "dtype")}
    for key, values in shared.items():
        if any(v != values[0] for v in values):
            raise _FieldError(f"{key}: channels disagree ({_show(values[0])} and {_show(next(v for v in values if v != values[0]))})")
    symmetric = entries[0].get("is_symmetric", "False")
    if symmetric not in ("True", "False", True, False):
        raise _FieldError(f"is_symmetric: expected 'True' or 'False', got {_show(symmetric)}")
    bits = _bits(entries[0]["bitwidth"], "bitwidth", params)
    scales, offsets = [e["scale"] for e in entries], [e["offset"] for e in entries]
    return _encoding(name, bits, symmetric in ("True", True), scales, offsets, per_channel=len(entries) > 1)


def _show(value: object) -> str:
    """`value` as the message shows it: at most 40 characters."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _kind(value: object) -> str:
    return {"dict": "a mapping", "list": "a list", "str": "a string"}.get(type(value).__name__, type(value).__name__)


def _keys(entry: Mapping, allowed: set[str], required: set[str]) -> None:
    for key in sorted(entry, key=str):
        if key not in allowed:
            raise _FieldError(f"{key}: {strict.unknown_key(key, allowed)}")
    missing = sorted(required - set(entry))
    if missing:
        raise _FieldError(f"{missing[0]}: missing")


def _integer_dtype(dtype: object) -> None:
    if not isinstance(dtype, str) or dtype.lower() != "int":
        raise _FieldError(f"dtype {str(dtype)[:40]}: not an integer encoding (float encodings are not quantization)")


def _bits(value: object, key: str, params: bool) -> int:
    bits = _whole(value)
    if bits is None:
        raise _FieldError(f"{key}: {_show(value)} is not a whole number of bits")
    if bits in ACTIVATION_BITS or (params and bits == BIAS_BITS):
        return bits
    allowed = "2..16, or 32 for biases" if params else "2..16"
    raise _FieldError(f"{key}: {_show(bits)} bits outside {allowed}")


def _list(value: object, key: str) -> list:
    if not isinstance(value, list):
        raise _FieldError(f"{key}: expected a list, got {_kind(value)}")
    return value


def _encoding(name: str, bits: int, symmetric: bool, scales: list, offsets: list, *, per_channel: bool) -> TensorEncoding:
    """The record of checked AIMET fields (onnxmp's zero point z = -offset; signed when the
    offset is -2^(bits-1) on a symmetric encoding)."""
    if not scales or len(scales) != len(offsets):
        raise _FieldError(f"{len(scales)} scales and {len(offsets)} offsets")
    for i, scale in enumerate(scales):
        if not _float32_positive(scale):
            raise _FieldError(f"scale[{i}]: {_show(scale)} is not a finite positive float32")
    whole = []
    for i, offset in enumerate(offsets):
        value = _whole(offset)
        if value is None:
            raise _FieldError(f"offset[{i}]: {_show(offset)} is not an integer")
        if not -(2**bits - 1) <= value <= 0:
            raise _FieldError(f"offset[{i}]: {_show(value)} outside the {bits}-bit grid's {-(2**bits - 1)}..0")
        whole.append(value)
    signed = symmetric and all(o == -(2 ** (bits - 1)) for o in whole)
    zero_points = tuple(0 for _ in whole) if signed else tuple(-o for o in whole)
    return TensorEncoding(
        name=name, bits=bits, scale=tuple(float(s) for s in scales), zero_point=zero_points,
        grid=Grid.SYMMETRIC_SIGNED if signed else Grid.ASYMMETRIC_UNSIGNED, axis=0 if per_channel else None,
    )


def _whole(value: object) -> int | None:
    """`value` as an int when it is a JSON number without a fraction (1e30 included), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    return value


def _float32_positive(value: object) -> bool:
    """A JSON number, positive and finite as the float32 ONNX stores, and not subnormal
    (x / scale would overflow to inf)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        as64 = float(value)
    except OverflowError:  # an integer beyond float64
        return False
    if not math.isfinite(as64) or as64 <= 0 or as64 > float(np.finfo(np.float32).max):
        return False
    return bool(np.float32(as64) >= np.finfo(np.float32).tiny)
