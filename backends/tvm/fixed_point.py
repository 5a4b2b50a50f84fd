"""Fixed-point requantization multipliers, in numpy (no tvm here, so it is testable alone).

A real multiplier M > 0 becomes an integer m and a shift n with M ~= m / 2**n. Requantizing an
integer accumulator a is then a * m in int64, rounded half to even at bit n, as QuantizeLinear
rounds: exact ties are common (an average of 4 integers, equal scales), and rounding them the
other way is a 1-LSB difference that later layers amplify.

>>> m, n = multiplier_and_shift(np.array([0.5, 0.0123]))
>>> (m * 2.0 ** -n).tolist() == [0.5, 0.0123]
False
>>> bool(np.all(np.abs(m * 2.0 ** -n / np.array([0.5, 0.0123]) - 1) < 2 ** -30))
True
>>> requantize(np.array([7, -7, 5, 100]), *multiplier_and_shift(np.array(0.5))).tolist()
[4, -4, 2, 50]
"""

from __future__ import annotations

import numpy as np

MANTISSA_BITS = 31   # m in [2**30, 2**31): 31 significant bits, so a * m fits int64 for |a| < 2**32
MAX_SHIFT = 62


def multiplier_and_shift(real: np.ndarray, mantissa_bits: int = MANTISSA_BITS):
    """Integer multipliers and shifts, per element: real ~= m / 2**shift, relative error < 2**-30,
    m < 2**31 (it fits int32)."""
    real = np.asarray(real, np.float64)
    if np.any(real <= 0) or not np.all(np.isfinite(real)):
        raise ValueError(f"requantization multipliers must be positive and finite, got {real}")
    shift = (mantissa_bits - np.ceil(np.log2(real))).astype(np.int64)
    if np.any(shift < 1) or np.any(shift > MAX_SHIFT):
        raise ValueError(f"requantization multiplier {real.max():.3g} is out of the fixed-point range")
    m = np.rint(real * 2.0 ** shift).astype(np.int64)
    top = m == 2 ** mantissa_bits      # rounded up out of range: the same value one bit lower
    m, shift = np.where(top, m // 2, m), np.where(top, shift - 1, shift)
    return m, shift


def requantize(acc: np.ndarray, m: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Reference of the kernel's arithmetic: acc * m / 2**shift rounded half to even, in int64."""
    return round_shift(np.asarray(acc, np.int64) * m, np.asarray(shift, np.int64))


def round_shift(value: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """value / 2**shift rounded half to even: add half - 1, plus 1 when the kept part is odd."""
    odd = (value >> shift) & 1
    return (value + (np.int64(1) << (shift - 1)) - 1 + odd) >> shift


def round_shift_half_up(value: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """value / 2**shift rounded half up: the cheaper form, equal to round_shift wherever
    `ties_possible` says no tie can occur."""
    return (value + (np.int64(1) << (shift - 1))) >> shift


def ties_possible(m: np.ndarray, shift: np.ndarray, magnitude: np.ndarray | int = 2 ** 31) -> bool:
    """Whether a * m / 2**shift can be an exact tie (x.5) for some integer |a| <= magnitude
    (per element of m, or one bound for all).

    a * m = 2**(shift-1) (mod 2**shift) needs a to hold exactly shift - 1 - v2(m) factors of two
    (v2: the power of two dividing m), so |a| >= 2**(shift - 1 - v2(m)). With the usual
    multipliers (shift around 40) only an m with many factors of two lets an accumulator reach
    it; the accumulator's real bound (a layer's 255 * sum|w| + |correction|, about 2**25) rules
    out most of those. Then half up and half to even agree everywhere, and the kernel can skip
    the tie fix-up.

    >>> ties_possible(np.array([3 << 10]), np.array([40]))            # |a| up to 2**31 may tie
    True
    >>> ties_possible(np.array([3 << 10]), np.array([40]), 2 ** 25)   # a bounded accumulator cannot
    False
    """
    m = np.asarray(m, np.int64).reshape(-1)
    shift = np.broadcast_to(np.asarray(shift, np.int64).reshape(-1), m.shape)
    magnitude = np.broadcast_to(np.asarray(magnitude, np.float64).reshape(-1), m.shape)
    live = m != 0
    twos = np.log2(m[live] & -m[live]).astype(np.int64)
    smallest_tie = 2.0 ** (shift[live] - 1 - twos)
    return bool(np.any(smallest_tie <= magnitude[live]))


def accumulator_bound(weight: np.ndarray, axis: int, correction: np.ndarray, input_max: int) -> np.ndarray:
    """Per output channel (`axis` of the integer weight), the largest |sum_k w_k x_k + correction|
    for inputs |x| <= input_max: what the requantization's multiply can see.

    >>> accumulator_bound(np.array([[1, -2], [3, 0]]), 0, np.array([5, -7]), 255).tolist()
    [770, 772]
    """
    weight = np.abs(np.moveaxis(np.asarray(weight, np.int64), axis, 0))
    channels = weight.shape[0]
    correction = np.broadcast_to(np.abs(np.asarray(correction, np.float64)).reshape(-1), (channels,))
    return input_max * weight.reshape(channels, -1).sum(axis=1) + correction.astype(np.int64)


def requantize_int32_parts(acc: np.ndarray, m: np.ndarray, shift: int) -> np.ndarray:
    """The int32-only form of round_shift_half_up(acc * m, shift) for |acc| < 2**20 and
    23 <= shift <= 53, step by step as the kernels compute it (every intermediate fits int32).

    >>> m, shift = multiplier_and_shift(np.array(0.0123))
    >>> a = np.array([-(2 ** 20) + 1, -5, 0, 41, 12345, 2 ** 20 - 1])
    >>> requantize_int32_parts(a, m, int(shift)).tolist() == round_shift_half_up(a * m, shift).tolist()
    True
    """
    a, m = np.asarray(acc, np.int32), np.asarray(m, np.int64).astype(np.int32)
    with np.errstate(over="raise"):
        low, mid, high = a * (m & 2047), a * ((m >> 11) & 2047), a * (m >> 22)
        top = high + ((mid + (low >> 11)) >> 11)
        return ((top + (np.int32(1) << (shift - 23))) >> (shift - 22)).astype(np.int64)


RESIDUAL_INT32_SHIFTS = range(17, 47)   # where residual_add_int32's intermediates fit int32


def residual_add_int32(ta: np.ndarray, ma: int, tb: np.ndarray, mb: int, shift: int, ties: bool) -> np.ndarray:
    """round(ta * ma + tb * mb, shift) (half to even with `ties`, else half up) for |ta|, |tb|
    <= 255, 0 < ma, mb < 2**31 and a shift in RESIDUAL_INT32_SHIFTS, in int32 only, step by
    step as the residual add kernel computes it: the multipliers in 16-bit halves, the sum as
    combined * 2**16 + r with 0 <= r < 2**16; half up is then (combined + 2**(s-17)) >> (s-16),
    and an exact tie (r = 0, combined = 2**(s-17) mod 2**(s-16)) rounds down when that is odd.

    >>> t = np.arange(-255, 256)
    >>> ref = round_shift(t.astype(np.int64) * 1234567891 + t[::-1] * 987654, np.int64(31))
    >>> residual_add_int32(t, 1234567891, t[::-1], 987654, 31, True).tolist() == ref.tolist()
    True
    """
    ta, tb = np.asarray(ta, np.int32), np.asarray(tb, np.int32)
    with np.errstate(over="raise"):
        high = ta * np.int32(ma >> 16) + tb * np.int32(mb >> 16)
        low = ta * np.int32(ma & 0xFFFF) + tb * np.int32(mb & 0xFFFF)
        combined = high + (low >> 16)
        up = (combined + (np.int32(1) << (shift - 17))) >> (shift - 16)
        if ties:
            tie = ((low & 0xFFFF) == 0) & ((combined & ((np.int32(1) << (shift - 16)) - 1)) == (np.int32(1) << (shift - 17)))
            up = up - (tie & (up & 1).astype(bool))
        return up.astype(np.int64)


def quantize_bound(value: float, scale: float, zero_point: int) -> int:
    """Where a float clamp bound lands on the output grid (half to even, as QuantizeLinear)."""
    if np.isinf(value):
        return -(2 ** 31) if value < 0 else 2 ** 31 - 1
    return int(np.rint(np.float32(value) / np.float32(scale))) + int(zero_point)
