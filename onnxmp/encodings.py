"""AIMET/QNN encodings JSON, both ways; the only module that knows that format's keys.

Why: Qualcomm's QNN/SNPE converters take `--quantization_overrides` in AIMET's format, and
AIMET users bring encodings they already have. Names refer to the user's original model:
canonicalization may rename a tensor (a BN-folded weight), so names are mapped back, and
tensors with no counterpart are reported, never silently dropped.

AIMET's integer convention: x_int = round(x / scale) - offset on an unsigned grid
[0, 2^bw - 1]; min = scale * offset, max = scale * (2^bw - 1 + offset). onnxmp's unsigned
zero point z maps to offset = -z; a signed symmetric encoding maps to offset = -2^(bw-1).
Formats: "1.0.0" (lists of {name, dtype, bw, is_sym, enc_type, scale[], offset[]}) and
"0.6.1" (dicts keyed by tensor name, one {bitwidth, dtype, is_symmetric, max, min, offset,
scale} per channel).
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx

from onnxmp import encodings_read
from onnxmp.errors import EncodingsError
from onnxmp.records import TensorEncoding

PROVENANCE_PREFIX = "onnxmp:from="
BIAS_MIN_BITS = 17  # param encodings this wide are int32 biases (scale s_x * s_w), not weights


@dataclass(frozen=True)
class EncodingSet:
    """The encoding of every quantized tensor of one configuration, by tensor name.

    Biases (int32, more than 16 bits) are kept apart from weights because their scale is
    derived (s_x * s_w); an encodings file lists both as `params`.
    """

    weights: Mapping[str, TensorEncoding]
    activations: Mapping[str, TensorEncoding]
    biases: Mapping[str, TensorEncoding] = field(default_factory=dict)
    # weight -> its integers where they are not round-to-nearest (AdaRound), same scale;
    # not part of the file: `model.adarounded.onnx` carries them for `apply`
    integers: Mapping[str, np.ndarray] = field(default_factory=dict)

    @property
    def params(self) -> dict[str, TensorEncoding]:
        """Weights and biases, as AIMET's `param_encodings` list them."""
        return {**self.weights, **self.biases}


class Version(enum.Enum):
    """The AIMET encodings file formats onnxmp writes and reads."""

    V1_0_0 = "1.0.0"
    V0_6_1 = "0.6.1"


FORMATS = tuple(v.value for v in Version)


def original_names(original: onnx.ModelProto, canonical: onnx.ModelProto) -> dict[str, str]:
    """Canonical tensor name -> the user's tensor name, for every tensor that has one.

    A tensor keeps its name through canonicalization unless a pass made a new one; such
    passes record the source in the initializer's doc_string (`onnxmp:from=<name>`).
    """
    graph = original.graph
    known = {t for n in graph.node for t in (*n.input, *n.output)}
    known |= {i.name for i in (*graph.input, *graph.output, *graph.initializer)}
    result = {}
    tensors = {t for n in canonical.graph.node for t in (*n.input, *n.output)} | {i.name for i in canonical.graph.input}
    provenance = {
        init.name: init.doc_string[len(PROVENANCE_PREFIX):]
        for init in canonical.graph.initializer
        if init.doc_string.startswith(PROVENANCE_PREFIX)
    }
    for name in tensors:
        if name in known:
            result[name] = name
        elif provenance.get(name) in known:
            result[name] = provenance[name]
    return result


def _offsets(enc: TensorEncoding) -> list[int]:
    if enc.signed:
        return [-(2 ** (enc.bits - 1))] * len(enc.scale)
    return [-z for z in enc.zero_point]


def _entry_v1(name: str, enc: TensorEncoding) -> dict:
    return {
        "name": name,
        "dtype": "INT",
        "bw": enc.bits,
        "is_sym": enc.symmetric,
        "enc_type": "PER_CHANNEL" if enc.axis is not None else "PER_TENSOR",
        "scale": [float(s) for s in enc.scale],
        "offset": _offsets(enc),
    }


def _entries_v061(enc: TensorEncoding) -> list[dict]:
    top = 2**enc.bits - 1
    return [
        {
            "bitwidth": enc.bits, "dtype": "int", "is_symmetric": str(enc.symmetric),
            "max": float(scale * (top + offset)), "min": float(scale * offset), "offset": offset, "scale": float(scale),
        }
        for scale, offset in zip(enc.scale, _offsets(enc), strict=True)
    ]


def to_json(encodings: EncodingSet, *, version: Version | str = Version.V1_0_0) -> str:
    """The AIMET encodings file text for `encodings` (names already the user's).

    `version` is a `Version` or its value.
    """
    try:
        version = Version(version)
    except ValueError:
        raise EncodingsError(f"encodings version {version!r} is not one of {', '.join(FORMATS)}") from None
    data: dict[str, object]
    if version is Version.V1_0_0:
        data = {
            "version": "1.0.0",
            "activation_encodings": [_entry_v1(n, e) for n, e in sorted(encodings.activations.items())],
            "param_encodings": [_entry_v1(n, e) for n, e in sorted(encodings.params.items())],
            "excluded_layers": [],
        }
    else:
        data = {
            "version": "0.6.1",
            "activation_encodings": {n: _entries_v061(e) for n, e in sorted(encodings.activations.items())},
            "param_encodings": {n: _entries_v061(e) for n, e in sorted(encodings.params.items())},
            "excluded_layers": [],
            "quantizer_args": {},
        }
    return json.dumps(data, indent=2) + "\n"


def from_json(text: str, *, where: str = "encodings") -> EncodingSet:
    """Parse an AIMET encodings file (1.0.0 or 0.6.1; version detected from its layout).

    Every field is checked (`encodings_read`); the model is not: see `apply`.
    """
    sections = encodings_read.parse(text, where)
    params = sections["param_encodings"]
    return EncodingSet(
        weights={n: e for n, e in params.items() if e.bits < BIAS_MIN_BITS},
        activations=sections["activation_encodings"],
        biases={n: e for n, e in params.items() if e.bits >= BIAS_MIN_BITS},
    )


def user_named(
    original: onnx.ModelProto,
    canonical: onnx.ModelProto,
    params: Mapping[str, TensorEncoding],
    activations: Mapping[str, TensorEncoding],
) -> tuple[EncodingSet, dict[str, str]]:
    """Encodings named by the user's tensors, and {canonical name: reason} for those without one."""
    names = original_names(original, canonical)
    absent = {
        name: "created by canonicalization and has no counterpart in the original model"
        for name in (*params, *activations) if name not in names
    }
    return EncodingSet(
        weights={names[n]: e for n, e in params.items() if n in names},
        activations={names[n]: e for n, e in activations.items() if n in names},
    ), absent
