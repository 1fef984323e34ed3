"""Frozen records that flow between the stages of onnxmp.

Why: each stage takes values and returns a new value; nothing accumulates state across
stages, and nothing is read by position. Tests compare these records directly.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from onnxmp.tensor_encoding import Grid as Grid  # re-exported: every stage reads these from records
from onnxmp.tensor_encoding import TensorEncoding as TensorEncoding
from onnxmp.tensor_encoding import integer_range as integer_range


class Granularity(enum.Enum):
    """How many scales a quantizer has."""

    PER_TENSOR = "per_tensor"
    PER_CHANNEL = "per_channel"


class SearchMethod(enum.Enum):
    """How a quality target is searched on the Pareto curve."""

    SEQUENTIAL = "sequential"
    BINARY = "binary"
    HYBRID = "hybrid"


class SelectionMethod(enum.Enum):
    """How a run's point was chosen: by a BOPs budget, or by one of the target searches."""

    BOPS = "bops"
    FIXED = "fixed"  # the strategy's knob (--qem, --lam) made a one-point curve
    LATENCY = "latency"  # a latency budget on the curve
    MEASURED_BEST = "measured_best"  # the best measured of a strategy's few points (AMED)
    SEQUENTIAL = "sequential"
    BINARY = "binary"
    HYBRID = "hybrid"

    def __str__(self) -> str:
        return self.value


class Strategy(enum.Enum):
    """Which phase-2 strategy builds the curve (onnxmp.search.STRATEGIES maps each to a function)."""

    GREEDY = "greedy"
    MIXQUANT = "mixquant"
    ADAQAT = "adaqat"
    AMED = "amed"  # Metropolis-Hastings over bit allocations under a latency budget (search.amed)


class ExecutorKind(enum.Enum):
    """Where phase-1 evaluations run."""

    LOCAL = "local"  # this process
    PROCESSES = "processes"  # local worker processes
    RAY = "ray"  # Ray tasks on an existing or a local cluster


class RangeMethod(enum.Enum):
    """How a quantizer's clipping range is chosen from calibration statistics."""

    MSE = "mse"
    MINMAX = "minmax"


_CANDIDATE_RE = re.compile(r"^(?:W(\d+))?A(\d+)$")


@dataclass(frozen=True, slots=True, order=True)
class Candidate:
    """A weight/activation bit-width pair a device kernel supports, e.g. W4A8.

    `w_bits` is None for groups that hold only activations (an Add, a Concat): they
    choose only the activation width.
    """

    w_bits: int | None
    a_bits: int

    def __str__(self) -> str:
        return f"A{self.a_bits}" if self.w_bits is None else f"W{self.w_bits}A{self.a_bits}"

    @classmethod
    def parse(cls, text: str) -> Candidate:
        """Parse "W4A8" or "A8".

        >>> Candidate.parse("W4A8"), Candidate.parse("a16")
        (Candidate(w_bits=4, a_bits=8), Candidate(w_bits=None, a_bits=16))
        """
        match = _CANDIDATE_RE.match(text.strip().upper())
        if match is None:
            raise ValueError(f"not a candidate: {text!r} (expected e.g. 'W4A8' or 'A8')")
        w_bits = int(match.group(1)) if match.group(1) else None
        return cls(w_bits, int(match.group(2)))

    def cost(self) -> int:
        """Bits product used to order candidates (weightless groups count a_bits twice)."""
        return (self.w_bits or self.a_bits) * self.a_bits


@dataclass(frozen=True, slots=True)
class QuantizerGroup:
    """Tensors that must share one candidate, and the ops whose cost they decide."""

    id: str
    weights: tuple[str, ...]
    activations: tuple[str, ...]
    ops: tuple[str, ...]
    candidates: tuple[Candidate, ...]  # allowed by the profile, highest first

    @property
    def highest(self) -> Candidate:
        return self.candidates[0]

    @property
    def lowest(self) -> Candidate:
        return self.candidates[-1]


@dataclass(frozen=True, slots=True)
class SkippedOp:
    """An op left in float, and why."""

    node: str
    op_type: str
    reason: str


@dataclass(frozen=True, slots=True)
class GroupAnalysis:
    """The result of deriving quantizer groups: the groups and the ops left out."""

    groups: tuple[QuantizerGroup, ...]
    skipped: tuple[SkippedOp, ...]
    # activation tensor a quantized op reads -> the tensor whose quantizer it uses
    # (differs when data-movement ops pass a quantizer through)
    anchors: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    tables: tuple[str, ...] = ()  # Gather tables quantized weight-only (`schemes.embeddings`)

    def group(self, group_id: str) -> QuantizerGroup:
        for group in self.groups:
            if group.id == group_id:
                return group
        raise KeyError(group_id)


class Plan(Mapping[str, Candidate]):
    """A read-only mapping group id -> Candidate, ordered as given, hashable."""

    __slots__ = ("_items",)

    def __init__(self, choices: Mapping[str, Candidate]) -> None:
        self._items = dict(choices)

    def __getitem__(self, group_id: str) -> Candidate:
        return self._items[group_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(tuple(sorted(self._items.items())))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and dict(self._items) == dict(other)

    def __repr__(self) -> str:
        return "Plan({" + ", ".join(f"{k!r}: {v}" for k, v in self._items.items()) + "})"

    def replace(self, group_id: str, candidate: Candidate) -> Plan:
        """Return a new plan with one group moved to `candidate`."""
        return Plan({**self._items, group_id: candidate})


@dataclass(frozen=True, slots=True)
class SensitivityTable:
    """Phase 1: SQNR (dB) of the network output with one group quantized alone.

    `sqnr_db[(group_id, candidate)]` may be +inf when the quantized group changes no
    output value (zero noise); predictions then treat that group's noise as zero.
    """

    sqnr_db: Mapping[tuple[str, Candidate], float]

    def of(self, group_id: str, candidate: Candidate) -> float:
        return self.sqnr_db[(group_id, candidate)]

    def predicted_sqnr_db(self, plan: Plan) -> float:
        """Phase 2's model: the groups' noise-to-signal ratios add at the output, so a plan's
        SQNR is -10 log10 of their sum (+inf when every group changes nothing)."""
        total = sum(noise_ratio(self.of(g, c)) for g, c in plan.items())
        return math.inf if total == 0 else -10 * math.log10(total)


def noise_ratio(sqnr_db: float) -> float:
    """10^(-SQNR/10); 0 for +inf dB.

    >>> noise_ratio(20.0), noise_ratio(math.inf)
    (0.01, 0.0)
    """
    return 0.0 if sqnr_db == math.inf else 10 ** (-sqnr_db / 10)


@dataclass(frozen=True, slots=True)
class ParetoPoint:
    """One configuration on the curve: its cost, predicted quality and plan.

    `measured_sqnr_db` and `accuracy` are filled (in a new record) when measured.
    `deployed_sqnr_db` (the written point only) is the same SQNR of the written model run as a
    user runs it, ONNX Runtime with its QDQ rewrites on; it differs from `measured_sqnr_db`
    where those rewrites compute differently (integer kernels, ONNX Runtime's own int32 biases).
    """

    bops_rel: float
    predicted_sqnr_db: float
    plan: Plan
    measured_sqnr_db: float | None = None
    accuracy: float | None = None
    deployed_sqnr_db: float | None = None
    latency_ms: float | None = None  # from the profile's latency model, when it has one
    measured_latency_ms: float | None = None  # whole-model median on this machine (`ort` latency model)


ParetoCurve = tuple[ParetoPoint, ...]


@dataclass(frozen=True, slots=True)
class Selection:
    """A point chosen from the curve, and how many evaluations the choice took."""

    point: ParetoPoint
    index: int
    evaluations: int
    method: SelectionMethod
