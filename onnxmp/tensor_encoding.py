"""The record of one tensor's quantization: its integer grid and its encoding.

Why: every stage after calibration reads encodings (phase 1, insert_qdq, the encodings
file, AdaRound), so the record and the one rule for its integer range live in one small
module at the base layer; `onnxmp.records` re-exports them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Grid(enum.Enum):
    """The integer grid of a quantizer: the signed/symmetric pair, of which onnxmp uses two.

    >>> Grid.SYMMETRIC_SIGNED.signed, Grid.ASYMMETRIC_UNSIGNED.symmetric
    (True, False)
    """

    SYMMETRIC_SIGNED = "symmetric_signed"  # zero point 0, integers in [-(2^(b-1)-1), 2^(b-1)-1]
    ASYMMETRIC_UNSIGNED = "asymmetric_unsigned"  # zero point z, integers in [0, 2^b - 1]

    @property
    def signed(self) -> bool:
        return self is Grid.SYMMETRIC_SIGNED

    @property
    def symmetric(self) -> bool:
        return self is Grid.SYMMETRIC_SIGNED


@dataclass(frozen=True, slots=True)
class TensorEncoding:
    """Quantization parameters of one tensor at one bit-width.

    Integers live in [qmin, qmax]; x_hat = scale * (x_int - zero_point). Per-channel
    encodings carry one scale and zero point per channel along `axis`.
    """

    name: str
    bits: int
    scale: tuple[float, ...]
    zero_point: tuple[int, ...]
    grid: Grid
    axis: int | None = None

    @property
    def signed(self) -> bool:
        return self.grid.signed

    @property
    def symmetric(self) -> bool:
        return self.grid.symmetric

    @property
    def qmin(self) -> int:
        return integer_range(self.bits, signed=self.signed, symmetric=self.symmetric)[0]

    @property
    def qmax(self) -> int:
        return integer_range(self.bits, signed=self.signed, symmetric=self.symmetric)[1]


def integer_range(bits: int, *, signed: bool, symmetric: bool) -> tuple[int, int]:
    """The integer grid of a quantizer; symmetric signed grids drop -2^(b-1) (restricted range).

    >>> integer_range(8, signed=True, symmetric=True), integer_range(4, signed=False, symmetric=False)
    ((-127, 127), (0, 15))
    """
    if not signed:
        return 0, 2**bits - 1
    low = -(2 ** (bits - 1)) + (1 if symmetric else 0)
    return low, 2 ** (bits - 1) - 1
