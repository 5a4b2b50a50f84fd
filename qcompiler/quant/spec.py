"""`QuantSpec`: how one tensor is quantized, and `QuantParams`: with what numbers.

Examples (these run as tests):

>>> w = QuantSpec(bits=8, signed=True, symmetric=True, narrow=True, axis=0)
>>> (w.qmin, w.qmax)
(-127, 127)
>>> a = QuantSpec(bits=4, signed=False, symmetric=False)
>>> (a.qmin, a.qmax)
(0, 15)
>>> w.with_bits(2).qmin, w.with_bits(2).qmax
(-1, 1)
"""

from __future__ import annotations

import dataclasses

import numpy as np

BITS = (2, 3, 4, 5, 6, 7, 8, 16)


@dataclasses.dataclass(frozen=True)
class QuantSpec:
    """A uniform quantizer: `bits` wide, signed or not, symmetric (zero point 0) or affine,
    narrow range (drop the most negative level, so that the grid is symmetric), per tensor
    (`axis` None) or per channel along `axis`, with ranges chosen by `observer`."""

    bits: int = 8
    signed: bool = False
    symmetric: bool = False
    narrow: bool = False
    axis: int | None = None
    observer: str = "minmax"

    def __post_init__(self) -> None:
        if self.bits not in BITS:
            raise ValueError(f"bits must be one of {BITS}, not {self.bits}")
        if self.narrow and not self.signed:
            raise ValueError("narrow range applies to signed quantizers only")

    @property
    def qmin(self) -> int:
        if not self.signed:
            return 0
        return -(2 ** (self.bits - 1)) + (1 if self.narrow else 0)

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.signed else 2**self.bits - 1

    @property
    def levels(self) -> int:
        return self.qmax - self.qmin + 1

    def with_bits(self, bits: int) -> QuantSpec:
        return dataclasses.replace(self, bits=bits)

    def describe(self) -> str:
        kind = ("int" if self.signed else "uint") + str(self.bits)
        scheme = "sym" if self.symmetric else "asym"
        where = "per-tensor" if self.axis is None else f"per-channel(axis {self.axis})"
        return f"{kind} {scheme}{' narrow' if self.narrow else ''} {where} {self.observer}"


@dataclasses.dataclass(frozen=True, eq=False)
class QuantParams:
    """Scale (float32) and zero point (integer, in [qmin, qmax]) for a spec: scalars or per channel."""

    scale: np.ndarray
    zero_point: np.ndarray

    def __post_init__(self) -> None:
        if not (np.all(np.isfinite(self.scale)) and np.all(self.scale > 0)):
            raise ValueError(f"scale must be finite and positive, got {self.scale}")
