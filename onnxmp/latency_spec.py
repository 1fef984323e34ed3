"""The `latency:` section of a hardware profile: which latency model, and its parameters.

Why: BOPs model an ideal device; a user ships to a real one. The profile names how its
latency is obtained: `systolic` (an accelerator model in the style of SCALE-Sim, the
simulator AMED builds on) or `ort` (ONNX Runtime measured on this machine). Both are
frozen records; the parser names the file and the key of every bad value.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

from onnxmp.errors import ProfileError


class CostAxis(enum.Enum):
    """What a curve trades noise against: BOPs, or the profile's latency model."""

    BOPS = "bops"
    LATENCY = "latency"


class Dataflow(enum.Enum):
    """What stays in a processing element of the systolic array while the rest streams."""

    OUTPUT_STATIONARY = "os"
    WEIGHT_STATIONARY = "ws"
    INPUT_STATIONARY = "is"


@dataclass(frozen=True)
class SystolicSpec:
    """A systolic-array accelerator (AMED Table 1 columns): array, SRAMs, DRAM port, clock.

    `bandwidth_words` is DRAM words per cycle per operand port and `word_bits` the width
    of a word, so a port moves bandwidth_words * word_bits bits a cycle whatever the
    operand width; a b-bit operand therefore takes b / word_bits of a word's traffic.
    """

    rows: int
    cols: int
    dataflow: Dataflow
    ifmap_sram_kb: float
    filter_sram_kb: float
    ofmap_sram_kb: float
    bandwidth_words: float
    clock_ghz: float
    word_bits: int = 16


@dataclass(frozen=True)
class OrtSpec:
    """ONNX Runtime on this machine: provider, threads, and how many timed runs (batch 1)."""

    provider: str = "CPUExecutionProvider"
    threads: int = 2
    runs: int = 30
    warmups: int = 5


LatencySpec = SystolicSpec | OrtSpec

_SYSTOLIC_KEYS = {
    "rows": int, "cols": int, "ifmap_sram_kb": float, "filter_sram_kb": float, "ofmap_sram_kb": float,
    "bandwidth_words": float, "clock_ghz": float, "word_bits": int,
}
_ORT_KEYS = {"provider": str, "threads": int, "runs": int, "warmups": int}


def parse_latency(raw: object, where: str) -> LatencySpec | None:
    """The record of a profile's `latency:` mapping (None when the profile has none).

    Raises:
        ProfileError: unknown model, unknown key, or a value of the wrong type or sign;
            the message names the file and `latency.<key>`.
    """
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ProfileError(f"{where}: latency: expected a mapping with 'model: systolic' or 'model: ort'")
    model = raw.get("model")
    if model == "systolic":
        return _systolic(raw, where)
    if model == "ort":
        return OrtSpec(**_fields(raw, _ORT_KEYS, where))
    raise ProfileError(f"{where}: latency.model: {model!r} (allowed: systolic, ort)")


def _systolic(raw: Mapping, where: str) -> SystolicSpec:
    values = _fields({k: v for k, v in raw.items() if k != "dataflow"}, _SYSTOLIC_KEYS, where)
    missing = sorted(set(_SYSTOLIC_KEYS) - {"word_bits"} - set(values))
    if missing:
        raise ProfileError(f"{where}: latency.{missing[0]}: missing required key for model systolic")
    return SystolicSpec(
        dataflow=_enum(Dataflow, raw.get("dataflow", "os"), where, "dataflow"),
        **values,
    )


def _fields(raw: Mapping, types: Mapping[str, type], where: str) -> dict:
    values = {}
    for key, value in raw.items():
        if key == "model":
            continue
        if key not in types:
            raise ProfileError(f"{where}: latency.{key}: unknown key (allowed: {', '.join(sorted(types))})")
        kind = types[key]
        ok = isinstance(value, str) if kind is str else (
            isinstance(value, int | float) and not isinstance(value, bool) and value > 0
            and (kind is float or float(value).is_integer())
        )
        if not ok:
            wanted = "a string" if kind is str else f"a positive {'integer' if kind is int else 'number'}"
            raise ProfileError(f"{where}: latency.{key}: expected {wanted}, got {value!r}")
        values[key] = kind(value)
    return values


def _enum(kind: type[enum.Enum], value: object, where: str, key: str):
    try:
        return kind(value)
    except ValueError:
        allowed = ", ".join(str(m.value) for m in kind)
        raise ProfileError(f"{where}: latency.{key}: {value!r} (allowed: {allowed})") from None
