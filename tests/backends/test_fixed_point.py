"""Fixed-point requantization: multipliers, rounding half to even, and the proof that lets a
kernel round half up where no exact tie can occur."""

from __future__ import annotations

import numpy as np
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from qcompiler.backends.tvm.fixed_point import (multiplier_and_shift, requantize, round_shift, round_shift_half_up,
                                                requantize_int32_parts, residual_add_int32, ties_possible)

INT32 = st.integers(-(2 ** 31), 2 ** 31 - 1)


@given(st.floats(1e-9, 1e3, allow_nan=False), st.lists(INT32, min_size=1, max_size=50))
def test_requantize_is_exact_rounding_half_to_even(real, values):
    m, shift = multiplier_and_shift(np.array(real))
    assert 2 ** 29 <= m < 2 ** 31
    acc = np.array(values, np.int64)
    exact = acc.astype(object) * int(m)            # Python integers: no overflow
    quotient = [int(round_half_even(v, int(shift))) for v in exact]
    assert requantize(acc, m, shift).tolist() == quotient


def round_half_even(value: int, shift: int) -> int:
    floor, rest = divmod(value, 2 ** shift)
    half = 2 ** (shift - 1)
    return floor + (rest > half or (rest == half and floor % 2 == 1))


@settings(max_examples=300)
@given(st.floats(1e-9, 0.4, allow_nan=False), st.lists(INT32, min_size=1, max_size=50))
def test_half_up_equals_half_even_when_no_tie_is_possible(real, values):
    m, shift = multiplier_and_shift(np.array(real))
    assume(not ties_possible(m, shift))   # those keep the tie fix-up (see the next test)
    products = np.array(values, np.int64) * m
    # The adversarial accumulators too: the powers of two closest to making a tie.
    edges = np.array([2 ** k for k in range(31)] + [-(2 ** k) for k in range(32)], np.int64) * m
    for product in (products, edges):
        assert np.array_equal(round_shift_half_up(product, shift), round_shift(product, shift))


def test_a_power_of_two_multiplier_admits_ties():
    m, shift = multiplier_and_shift(np.array(0.5))    # x / 2: 1 -> 0.5, a tie
    assert ties_possible(m, shift)
    assert round_shift(np.array([1]) * m, shift).tolist() == [0]
    assert round_shift_half_up(np.array([1]) * m, shift).tolist() == [1]


def test_typical_convolution_multipliers_admit_no_tie():
    rng = np.random.default_rng(0)
    m, shift = multiplier_and_shift(rng.uniform(1e-4, 1e-2, 64))
    assert not ties_possible(m, shift)


@settings(max_examples=200)
@given(st.integers(1, 2 ** 20), st.integers(0, 30), st.integers(20, 45), st.integers(1, 2 ** 12))
def test_a_bounded_accumulator_rules_out_ties_exactly(odd, twos, shift, bound):
    """ties_possible with a magnitude bound: when it says no, no |a| <= bound ties (checked for
    every a); when it says yes, some a within the bound does tie (unless m alone holds shift
    factors of two: then nothing can tie, and the answer is merely cautious)."""
    m = np.array([(2 * odd - 1) << twos], np.int64) % (2 ** 31)
    assume(m[0] > 0)
    shift = np.array([shift], np.int64)
    accumulators = np.arange(-bound, bound + 1, dtype=np.int64)
    ties = (accumulators * m[0]) % (2 ** int(shift[0])) == 2 ** (int(shift[0]) - 1)
    if int(shift[0]) - 1 - int(np.log2(m[0] & -m[0])) >= 0:
        assert ties_possible(m, shift, bound) == bool(ties.any())
    else:
        assert not ties.any()


@settings(max_examples=400)
@given(st.floats(1e-7, 0.45, allow_nan=False), st.lists(st.integers(-(2 ** 20) + 1, 2 ** 20 - 1), min_size=1, max_size=50))
def test_int32_parts_equal_the_int64_requantization(real, values):
    """The kernels' int32-only form for accumulators below 2**20 (layers with few input
    channels): bit-identical to the int64 half-up rounding, the extremes included."""
    m, shift = multiplier_and_shift(np.array(real))
    assume(23 <= int(shift) <= 53)   # as RequantizeCode.code_for requires
    accumulators = np.array(values + [2 ** 20 - 1, -(2 ** 20) + 1, 0, 1, -1], np.int64)
    assert np.array_equal(requantize_int32_parts(accumulators, m, int(shift)),
                          round_shift_half_up(accumulators * m, shift))


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 2 ** 31 - 1), st.integers(1, 2 ** 31 - 1), st.integers(17, 46), st.booleans(),
       st.integers(0, 2 ** 32 - 1))
def test_residual_add_int32_form_equals_the_int64_rounding(ma, mb, shift, ties, seed):
    rng = np.random.default_rng(seed)
    ta, tb = rng.integers(-255, 256, 512), rng.integers(-255, 256, 512)
    total = ta.astype(np.int64) * ma + tb.astype(np.int64) * mb
    reference = round_shift(total, np.int64(shift)) if ties else \
        round_shift_half_up(total, np.int64(shift))
    np.testing.assert_array_equal(residual_add_int32(ta, ma, tb, mb, shift, ties), reference)


def test_residual_add_int32_form_rounds_exact_ties_to_even():
    # ta * 2**15 / 2**17 = ta / 4: ta = 2 and 6 are exact ties (0.5 -> 0, 1.5 -> 2)
    ta = np.array([2, 6, -2, -6, 1, 3])
    out = residual_add_int32(ta, 2 ** 15, np.zeros(6, np.int64), 1, 17, True)
    np.testing.assert_array_equal(out, round_shift(ta.astype(np.int64) * 2 ** 15, np.int64(17)))
    assert out.tolist()[:4] == [0, 2, 0, -2]
