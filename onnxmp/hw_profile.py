"""Hardware profiles: YAML -> frozen `HwProfile`, validated, every error naming file and key.

Why: the device decides which (weight, activation) bit-width kernels exist, which ops run
quantized and which only move data; onnxmp never assumes a kernel the device lacks.
Built-in profiles ship in `onnxmp/hw_profiles/` and are found by name (`--profile npu`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import MappingProxyType

import yaml

from onnxmp.errors import ProfileError, first_line
from onnxmp.records import Candidate, Granularity

MIN_BITS, MAX_BITS = 2, 16
_TOP_KEYS = {"name", "description", "kernels", "ops", "op_kernels", "schemes"}


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
    description: str = ""
    fingerprint: str = ""

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
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ProfileError(f"{where}: not valid YAML: {first_line(e)}") from e
    if not isinstance(raw, dict):
        raise ProfileError(f"{where}: expected a mapping at the top level")
    return _parse(raw, where, hashlib.sha256(text.encode()).hexdigest())


def _read(name_or_path: str) -> tuple[str, str]:
    path = Path(name_or_path)
    if path.suffix in {".yaml", ".yml"} or path.exists():
        try:
            return path.read_text(), str(path)
        except OSError as e:
            raise ProfileError(f"{path}: cannot read profile: {e.strerror}") from e
    if name_or_path in builtin_names():
        resource = resources.files("onnxmp.hw_profiles") / f"{name_or_path}.yaml"
        return resource.read_text(), f"{name_or_path}.yaml"
    raise ProfileError(
        f"{name_or_path}: no such profile file or built-in profile "
        f"(built-in: {', '.join(builtin_names())})"
    )


def _parse(raw: dict, where: str, fingerprint: str) -> HwProfile:
    unknown = sorted(set(raw) - _TOP_KEYS)
    if unknown:
        raise ProfileError(f"{where}: {unknown[0]}: unknown key (allowed: {', '.join(sorted(_TOP_KEYS))})")
    kernels = _parse_kernels(_require(raw, "kernels", where), where, "kernels")
    ops = _require(raw, "ops", where)
    if not isinstance(ops, dict):
        raise ProfileError(f"{where}: ops: expected a mapping with 'quantized' and 'passthrough'")
    quantized = _op_list(ops, "quantized", where)
    passthrough = _op_list(ops, "passthrough", where)
    both = sorted(quantized & passthrough)
    if both:
        raise ProfileError(f"{where}: ops.passthrough: {both[0]!r} is also listed as quantized")
    op_kernels = {}
    for op_type, kernel_list in _mapping(raw, "op_kernels", where).items():
        key = f"op_kernels.{op_type}"
        parsed = _parse_kernels(kernel_list, where, key, activation_only=True)
        missing = [str(k) for k in parsed if k.w_bits is not None and k not in kernels]
        if missing:
            raise ProfileError(f"{where}: {key}: {missing[0]} is not one of the profile's kernels")
        op_kernels[op_type] = parsed
    schemes = _mapping(raw, "schemes", where)
    weights = _mapping(schemes, "weights", where, "schemes.")
    if not _bool(weights, "symmetric", True, f"{where}: schemes.weights.symmetric"):
        raise ProfileError(f"{where}: schemes.weights.symmetric: false: asymmetric weights are not supported")
    activations = _mapping(schemes, "activations", where, "schemes.")
    return HwProfile(
        name=str(raw.get("name") or Path(where).stem),
        kernels=kernels,
        quantized_ops=quantized,
        passthrough_ops=passthrough,
        op_kernels=MappingProxyType(op_kernels),
        weight_granularity=_granularity(weights, where),
        activation_symmetric=_bool(
            activations, "symmetric", False, f"{where}: schemes.activations.symmetric"
        ),
        quantize_bias=_bool(
            _mapping(schemes, "bias", where, "schemes."), "quantize", False, f"{where}: schemes.bias.quantize"
        ),
        description=str(raw.get("description", "")),
        fingerprint=fingerprint,
    )


def _mapping(raw: Mapping, key: str, where: str, prefix: str = "") -> Mapping:
    value = raw.get(key) or {}
    if not isinstance(value, dict):
        raise ProfileError(f"{where}: {prefix}{key}: expected a mapping, got {type(value).__name__}")
    return value


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
        try:
            kernel = Candidate.parse(str(item))
        except ValueError:
            raise ProfileError(f"{where}: {key}[{i}]: unknown {item!r} (expected e.g. 'W4A8')") from None
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
    return frozenset(value)


def _granularity(scheme: Mapping, where: str) -> Granularity:
    value = scheme.get("granularity", Granularity.PER_CHANNEL.value)
    try:
        return Granularity(value)
    except ValueError:
        allowed = ", ".join(g.value for g in Granularity)
        raise ProfileError(f"{where}: schemes.weights.granularity: {value!r} (allowed: {allowed})") from None


def _bool(scheme: Mapping, key: str, default: bool, where_key: str) -> bool:
    value = scheme.get(key, default)
    if not isinstance(value, bool):
        raise ProfileError(f"{where_key}: expected true or false, got {value!r}")
    return value
