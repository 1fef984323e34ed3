"""Hardware profiles: YAML -> frozen `HwProfile`, validated, every error naming file and key.

Why: the device decides which (weight, activation) bit-width kernels exist, which ops run
quantized and which only move data; onnxmp never assumes a kernel the device lacks.
Built-in profiles ship in `onnxmp/hw_profiles/` and are found by name (`--profile npu`).
"""

from __future__ import annotations

import enum
import functools
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import TypeVar

import onnx.defs

from onnxmp import strict
from onnxmp.errors import ProfileError
from onnxmp.latency_spec import LatencySpec, parse_latency
from onnxmp.records import Candidate, Granularity

E = TypeVar("E", bound=enum.Enum)

MIN_BITS, MAX_BITS = 2, 16
_TOP_KEYS = {"name", "description", "kernels", "ops", "op_kernels", "schemes", "latency"}
_OPS_KEYS = {"quantized", "passthrough"}
_SCHEME_KEYS = {
    "weights": {"granularity", "symmetric", "rounding", "bias_correction"}, "activations": {"granularity", "symmetric", "clipping"},
    "bias": {"quantize"},
    "embeddings": {"bits", "granularity"},
}


class WeightRounding(enum.Enum):
    """How weights are rounded onto their grid, the scale fixed: nearest, or AdaRound's learned up/down."""

    NEAREST = "nearest"
    ADAROUND = "adaround"


class ActivationClipping(enum.Enum):
    """How an activation's range is chosen: the tensor's own MSE, or (`output`) that range
    shrunk by the factor that is best at the network output (onnxmp.phase1.clip_activations)."""

    TENSOR = "tensor"
    OUTPUT = "output"


@dataclass(frozen=True, slots=True)
class WeightOnly:
    """Weight-only quantization of Gather tables (embeddings): stored as integers, read as
    floats (no kernel computes with them, so BOPs do not see them; the model size does).
    PER_CHANNEL means one scale per row (per token)."""

    bits: int
    granularity: Granularity = Granularity.PER_CHANNEL


@dataclass(frozen=True)
class HwProfile:
    """What a device can run. `kernels` are ordered highest (most bits) first."""

    name: str
    kernels: tuple[Candidate, ...]
    quantized_ops: frozenset[str]
    passthrough_ops: frozenset[str]
    op_kernels: Mapping[str, tuple[Candidate, ...]] = field(default_factory=dict)
    weight_granularity: Granularity = Granularity.PER_CHANNEL
    activation_symmetric: bool = False
    quantize_bias: bool = False
    weight_rounding: WeightRounding = WeightRounding.NEAREST  # schemes.weights.rounding
    activation_clipping: ActivationClipping = ActivationClipping.TENSOR  # schemes.activations.clipping
    bias_correction: bool = False  # schemes.weights.bias_correction
    embeddings: WeightOnly | None = None
    description: str = ""
    fingerprint: str = ""
    latency: LatencySpec | None = None  # the `latency:` section (onnxmp.latency_spec)
    float_groups: bool = False  # `float` among `kernels`: a group may stay unquantized (onnxmp.float_candidate)

    def kernels_for(self, op_type: str) -> tuple[Candidate, ...]:
        """Kernels an op type may use: its own list if the profile gives one, else all."""
        return self.op_kernels.get(op_type, self.kernels)


def builtin_names() -> tuple[str, ...]:
    files = resources.files("onnxmp.hw_profiles").iterdir()
    return tuple(sorted(f.name[:-5] for f in files if f.name.endswith(".yaml")))


def load_profile(name_or_path: str | Path) -> HwProfile:
    """Load a built-in profile by name (`npu`) or a YAML file by path.

    Raises:
        ProfileError: unreadable file, bad YAML, or a key with a bad value; the message
            names the file and the key path.
    """
    text, where = _read(str(name_or_path))
    raw = strict.load_yaml(text, where, ProfileError)
    if not isinstance(raw, dict):
        raise ProfileError(f"{where}: expected a mapping at the top level")
    return _parse(raw, where, hashlib.sha256(text.encode()).hexdigest())


def _read(name_or_path: str) -> tuple[str, str]:
    path = Path(name_or_path)
    if path.suffix in {".yaml", ".yml"} or path.exists():
        try:
            return path.read_text(encoding="utf-8"), str(path)
        except OSError as e:
            raise ProfileError(f"{path}: cannot read profile: {e.strerror}") from e
        except UnicodeDecodeError as e:
            raise ProfileError(f"{path}: not a YAML text file (byte {e.start} is not UTF-8)") from e
    if name_or_path in builtin_names():
        resource = resources.files("onnxmp.hw_profiles") / f"{name_or_path}.yaml"
        return resource.read_text(), f"{name_or_path}.yaml"
    raise ProfileError(
        f"{name_or_path}: no such profile file or built-in profile "
        f"(built-in: {', '.join(builtin_names())})"
    )


def _parse(raw: dict, where: str, fingerprint: str) -> HwProfile:
    strict.check_keys(raw, _TOP_KEYS, f"{where}: ", ProfileError)
    kernel_list = _require(raw, "kernels", where)
    float_groups = _float_entry(kernel_list, where)
    kernels = _parse_kernels(kernel_list, where, "kernels")
    ops = _require(raw, "ops", where)
    if not isinstance(ops, dict):
        raise ProfileError(f"{where}: ops: expected a mapping with 'quantized' and 'passthrough'")
    strict.check_keys(ops, _OPS_KEYS, f"{where}: ops.", ProfileError)
    quantized = _op_list(ops, "quantized", where)
    passthrough = _op_list(ops, "passthrough", where)
    both = sorted(quantized & passthrough)
    if both:
        raise ProfileError(f"{where}: ops.passthrough: {both[0]!r} is also listed as quantized")
    op_kernels = {}
    for op_type, kernel_list in _mapping(raw, "op_kernels", where).items():
        key = f"op_kernels.{op_type}"
        _check_op_type(op_type, where, "op_kernels.")
        parsed = _parse_kernels(kernel_list, where, key, activation_only=True)
        missing = [str(k) for k in parsed if k.w_bits is not None and k not in kernels]
        if missing:
            raise ProfileError(f"{where}: {key}: {missing[0]} is not one of the profile's kernels")
        op_kernels[op_type] = parsed
    schemes = _schemes(raw, where)
    weights, activations = schemes["weights"], schemes["activations"]
    if not _bool(weights, "symmetric", True, f"{where}: schemes.weights.symmetric"):
        raise ProfileError(f"{where}: schemes.weights.symmetric: false: asymmetric weights are not supported")
    return HwProfile(
        name=str(raw.get("name") or Path(where).stem),
        kernels=kernels,
        quantized_ops=quantized,
        passthrough_ops=passthrough,
        op_kernels=MappingProxyType(op_kernels),
        weight_granularity=_choice(Granularity, weights, "schemes.weights.granularity", Granularity.PER_CHANNEL, where),
        activation_symmetric=_bool(
            activations, "symmetric", False, f"{where}: schemes.activations.symmetric"
        ),
        quantize_bias=_bool(schemes["bias"], "quantize", False, f"{where}: schemes.bias.quantize"),
        weight_rounding=_choice(WeightRounding, weights, "schemes.weights.rounding", WeightRounding.NEAREST, where),
        activation_clipping=_choice(
            ActivationClipping, activations, "schemes.activations.clipping", ActivationClipping.TENSOR, where
        ),
        bias_correction=_bool(weights, "bias_correction", False, f"{where}: schemes.weights.bias_correction"),
        embeddings=_embeddings(schemes["embeddings"], where),
        description=str(raw.get("description", "")),
        fingerprint=fingerprint,
        latency=parse_latency(raw.get("latency"), where),
        float_groups=float_groups,
    )


FLOAT_KERNEL = "float"


def _is_float(item: object) -> bool:
    return isinstance(item, str) and item.strip().lower() == FLOAT_KERNEL


def _float_entry(value: object, where: str) -> bool:
    """Whether `kernels` lists `float` (once, beside at least one WxAy kernel)."""
    if not isinstance(value, list):
        return False
    at = [i for i, item in enumerate(value) if _is_float(item)]
    if len(at) > 1:
        raise ProfileError(f"{where}: kernels[{at[1]}]: 'float' listed twice")
    if at and len(value) == 1:
        raise ProfileError(f"{where}: kernels: 'float' alone: list at least one kernel such as W8A8 beside it")
    return bool(at)


def _choice(kind: type[E], scheme: Mapping, key: str, default: E, where: str) -> E:
    """The enum member `scheme[key]` names (default when absent); an unknown name is a
    ProfileError listing the allowed ones. `key` is the dotted path shown in the message."""
    value = scheme.get(key.rsplit(".", 1)[-1], default.value)
    try:
        return kind(value)
    except ValueError:
        allowed = ", ".join(str(member.value) for member in kind)
        raise ProfileError(f"{where}: {key}: {value!r} (allowed: {allowed})") from None


def _embeddings(scheme: Mapping, where: str) -> WeightOnly | None:
    """`schemes.embeddings: {bits: 8, granularity: per_channel}`, or None when absent."""
    if not scheme:
        return None
    bits = scheme.get("bits")
    if not isinstance(bits, int) or isinstance(bits, bool) or not MIN_BITS <= bits <= MAX_BITS:
        raise ProfileError(f"{where}: schemes.embeddings.bits: expected an integer in {MIN_BITS}..{MAX_BITS}, got {bits!r}")
    granularity = _choice(Granularity, scheme, "schemes.embeddings.granularity", Granularity.PER_CHANNEL, where)
    return WeightOnly(bits, granularity)


def _mapping(raw: Mapping, key: str, where: str, prefix: str = "") -> Mapping:
    value = raw.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ProfileError(f"{where}: {prefix}{key}: expected a mapping, got {type(value).__name__}")
    return value


def _schemes(raw: Mapping, where: str) -> dict[str, Mapping]:
    """The scheme sections, each checked for unknown keys (a typo must not pass silently)."""
    schemes = _mapping(raw, "schemes", where)
    strict.check_keys(schemes, _SCHEME_KEYS, f"{where}: schemes.", ProfileError)
    sections = {}
    for name, keys in _SCHEME_KEYS.items():
        sections[name] = _mapping(schemes, name, where, "schemes.")
        strict.check_keys(sections[name], keys, f"{where}: schemes.{name}.", ProfileError)
    granularity = sections["activations"].get("granularity", Granularity.PER_TENSOR.value)
    if granularity != Granularity.PER_TENSOR.value:
        raise ProfileError(f"{where}: schemes.activations.granularity: {granularity!r} (allowed: per_tensor)")
    return sections


def _require(raw: Mapping, key: str, where: str) -> object:
    if key not in raw:
        raise ProfileError(f"{where}: {key}: missing required key")
    return raw[key]


def _parse_kernels(value: object, where: str, key: str, *, activation_only: bool = False) -> tuple[Candidate, ...]:
    """Kernels such as W4A8; with `activation_only`, also A16 (an op without weights, e.g. Softmax)."""
    if not isinstance(value, list) or not value:
        raise ProfileError(f"{where}: {key}: expected a non-empty list such as [W8A8, W4A8]")
    kernels = []
    for i, item in enumerate(value):
        if key == "kernels" and _is_float(item):
            continue  # a group may stay float (`_float_entry`), not a kernel
        try:
            kernel = Candidate.parse(str(item))
        except ValueError:
            hint = " or 'float'" if key == "kernels" else ""
            raise ProfileError(f"{where}: {key}[{i}]: unknown {item!r} (expected e.g. 'W4A8'{hint})") from None
        if kernel.w_bits is None and not activation_only:
            raise ProfileError(f"{where}: {key}[{i}]: {item!r} has no weight bits (expected e.g. 'W4A8')")
        for bits in (b for b in (kernel.w_bits, kernel.a_bits) if b is not None):
            if not MIN_BITS <= bits <= MAX_BITS:
                raise ProfileError(
                    f"{where}: {key}[{i}]: {item!r}: bit-width {bits} outside {MIN_BITS}..{MAX_BITS}"
                )
        if kernel in kernels:
            raise ProfileError(f"{where}: {key}[{i}]: {item!r} listed twice")
        kernels.append(kernel)
    return tuple(sorted(kernels, key=lambda k: (-k.cost(), -k.a_bits)))


def _op_list(ops: Mapping, key: str, where: str) -> frozenset[str]:
    value = ops.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ProfileError(f"{where}: ops.{key}: expected a list of ONNX op types")
    for i, op_type in enumerate(value):
        _check_op_type(op_type, where, f"ops.{key}[{i}]: ")
    return frozenset(value)


@functools.cache
def onnx_op_types() -> frozenset[str]:
    """Every op type some ONNX domain defines (a profile naming another one has a typo)."""
    return frozenset(schema.name for schema in onnx.defs.get_all_schemas_with_history())


def _check_op_type(op_type: object, where: str, prefix: str) -> None:
    if not isinstance(op_type, str) or op_type not in onnx_op_types():
        near = strict.closest(op_type, onnx_op_types())
        hint = f" (did you mean {near!r}?)" if near else ""
        raise ProfileError(f"{where}: {prefix}{op_type!r} is not an ONNX op type{hint}")


def _bool(scheme: Mapping, key: str, default: bool, where_key: str) -> bool:
    value = scheme.get(key, default)
    if not isinstance(value, bool):
        raise ProfileError(f"{where_key}: expected true or false, got {value!r}")
    return value
