"""The requantization epilogue the kernels compute: out = clamp(round(((acc + corr) * m) >> shift)
+ zero point, lo, hi), its per-layer numbers as one kernel input (requantize_table), and the
TE code that computes it in int64, or in int32 where no accumulator can overflow it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qcompiler.backends.tvm.fixed_point import accumulator_bound


@dataclass(frozen=True)
class RequantizeCode:
    """What shapes a kernel's requantization code: the output dtype and whether exact ties can
    occur (False: fixed_point.ties_possible ruled them out; round half up, cheaper)."""

    dtype: str
    ties: bool = True
    int32: bool = False   # the accumulator stays below 2**20: the product in three int32 parts
    high_word: bool = False   # no ties, 32 <= shift <= 62: int64 products, then int32 from their high words

    @property
    def suffix(self) -> str:
        return f"_rq_{self.dtype}{'_t' * self.ties}{'_i' * self.int32}{'_h' * self.high_word}"


@dataclass(frozen=True)
class Requantize:
    """The epilogue fused into a kernel: out = clamp(round_half_even(((acc + corr) * m) >> shift)
    + zero_point, lo, hi) as `dtype`. corr and m per channel, zero point, bounds and shift per
    layer: all kernel inputs (requantize_table), so that one kernel serves every layer of its
    shape (constants in the code made 45 MobileNetV2 kernels of 29 shapes)."""

    zero_point: int
    lo: int
    hi: int
    dtype: str
    shift: int
    ties: bool = True

    def code_for(self, weight: np.ndarray, corr: np.ndarray, input_max: int) -> RequantizeCode:
        """The code for a layer with these int8 weights (output channels first), per-channel
        corrections and inputs up to `input_max` in magnitude: the int32 form where no
        accumulator reaches 2**20 (255 * sum|w| + |corr| per channel) and no tie can occur."""
        bound = accumulator_bound(weight, 0, corr, input_max)
        fits = not self.ties and 23 <= self.shift <= 53 and int(bound.max()) < 2 ** INT32_ACCUMULATOR_BITS
        return RequantizeCode(self.dtype, self.ties, fits, not fits and not self.ties and 32 <= self.shift <= 62)

    @property
    def values(self) -> np.ndarray:
        return np.array([self.zero_point, self.lo, self.hi, self.shift], np.int32)


def requantize_table(corr: np.ndarray, multiplier: np.ndarray, requantize: Requantize, channels: int,
                     padded: int) -> np.ndarray:
    """A layer's requantization as one int32 kernel input: corr and m per output channel (zero
    in the padded channels), then Requantize.values. One constant instead of three: each of the
    VM's constants costs ~58 bytes of library."""
    table = np.zeros(2 * padded + 4, np.int32)
    table[:channels] = np.broadcast_to(corr.reshape(-1), (channels,))
    table[padded:padded + channels] = np.broadcast_to(multiplier.reshape(-1), (channels,))
    table[2 * padded:] = requantize.values
    return table


def requantized(tvm, te, acc, channels: int, code: RequantizeCode, shape=None, read=None):
    """The fused requantization over `shape` (default: acc's), reading the accumulator with
    `read(b, y, x, o)` (default: acc[b, y, x, o]); returns it and its kernel input, the layer's
    requantize_table s32[2 * channels + 4]: corr, m, then zero point, lo, hi, shift."""
    read = read or (lambda b, y, x, o: acc[b, y, x, o])
    table = te.placeholder((2 * channels + 4,), "int32", name="requantize_table")
    return te.compute(shape or acc.shape, requantize_expression(tvm, code, read, table, channels),
                      name="requantize"), [table]


def requantize_expression(tvm, code: RequantizeCode, read, table, channels: int):
    """compute(b, y, x, o): the requantized output of the accumulator `read(b, y, x, o)`, its
    numbers read from `table` (requantize_table's layout: a TE placeholder, or a TIR buffer in a
    kernel written as TIR, where o may be a vector of 16 channels and the result a vector)."""
    def corr(o):
        return table[o]

    def m(o):
        return table[channels + o]

    params = [table[2 * channels + i] for i in range(4)]
    if code.int32:
        return _int32_requantize(tvm, read, corr, m, params, code.dtype)
    if code.high_word:
        return _high_word_requantize(tvm, read, corr, m, params, code.dtype)

    def compute(b, y, x, o):
        product = _as(_int32_sum(tvm, read(b, y, x, o), corr(o)), "int64") * _as(m(o), "int64")
        return rounded_to_grid(tvm, product, params, code)

    return compute


def rounded_to_grid(tvm, product, params, code: RequantizeCode):
    """An int64 fixed-point value shifted right by `bits` with rounding (half to even, or half
    up where code.ties is False), plus the zero point, clamped to [lo, hi], cast to code.dtype;
    params = (zero point, lo, hi, bits) as int32 expressions."""
    zero_point, lo, hi, bits = (p.astype("int64") for p in params)
    one = tvm.tirx.const(1, "int64")
    if code.ties:
        odd = (product >> bits) & one
        rounded = ((product + ((one << (bits - one)) - one) + odd) >> bits) + zero_point
    else:
        rounded = ((product + (one << (bits - one))) >> bits) + zero_point
    return _as(tvm.tirx.max(tvm.tirx.min(rounded, hi), lo), code.dtype)


def _high_word_requantize(tvm, read, corr, m, params, dtype: str):
    """The half-up requantization for shifts 32 <= s <= 62: P = (acc + corr) * m + 2**(s-1) in
    int64, then floor(P / 2**s) = floor(floor(P / 2**32) / 2**(s-32)), the rest in int32 (|P| <
    2**62: its high word fits); AVX2 has no 64-bit arithmetic shift or min/max, and the product
    of two sign-extended int32 is one vpmuldq per 4 lanes."""
    zero_point, lo, hi, bits = params
    one = tvm.tirx.const(1, "int64")

    def compute(b, y, x, o):
        product = _as(_int32_sum(tvm, read(b, y, x, o), corr(o)), "int64") * _as(m(o), "int64") \
            + (one << (bits.astype("int64") - one))
        high = _as(product >> tvm.tirx.const(32, "int64"), "int32")
        rounded = (high >> (bits - 32)) + zero_point
        return _as(tvm.tirx.max(tvm.tirx.min(rounded, hi), lo), dtype)

    return compute


def _as(value, dtype: str):
    """value cast to `dtype`, as many lanes as it has (TE's scalars, or a TIR kernel's vectors)."""
    lanes = str(getattr(value, "ty", "")).partition("x")[2]   # a TE TensorSlice has no type: a scalar
    return value.astype(f"{dtype}x{lanes}" if lanes else dtype)


def _int32_sum(tvm, a, b):
    """a + b as an int32 value that TVM's simplifier does not widen (it rewrites int64(a + b)
    as int64(a) + int64(b), after which LLVM sees a 33-bit operand and emulates the 64-bit
    product instead of one vpmuldq per 4 lanes)."""
    total = a + b
    dtype = str(total.ty)   # int32, or int32x16 in a kernel written as TIR
    return tvm.tirx.reinterpret(dtype, tvm.tirx.reinterpret("u" + dtype, total))


INT32_ACCUMULATOR_BITS = 20   # |acc + corr| < 2**20: each 11-bit part of m times it fits int32


def _int32_requantize(tvm, read, corr, m, params, dtype: str):
    """The half-up requantization in int32 only, for accumulators below 2**20 (the layers with
    few input channels, where the int64 form costs more than the dot products): m in three
    11-bit parts, a * m = p2 * 2**22 + p1 * 2**11 + p0, each part's product in int32. With a
    shift s >= 23, floor((a*m + 2**(s-1)) / 2**s) depends on the low parts only through their
    carries, so for 23 <= s <= 53 it equals floor((p2 + carry + 2**(s-23)) / 2**(s-22)) exactly
    (fixed_point.requantize_int32_parts is the numpy reference)."""
    zero_point, lo, hi, bits = params
    mask = tvm.tirx.const(2047, "int32")

    def compute(b, y, x, o):
        a, mult = read(b, y, x, o) + corr(o), m(o)
        low, mid, high = a * (mult & mask), a * ((mult >> 11) & mask), a * (mult >> 22)
        top = high + ((mid + (low >> 11)) >> 11)
        rounded = ((top + (tvm.tirx.const(1, "int32") << (bits - 23))) >> (bits - 22)) + zero_point
        return _as(tvm.tirx.max(tvm.tirx.min(rounded, hi), lo), dtype)

    return compute
