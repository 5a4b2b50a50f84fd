"""Quantizer maths: exact properties, checked with hypothesis over specs, ranges and values."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from qcompiler.quant import QuantParams, QuantSpec, dequantize, fake_quantize, params_from_range, quantize
from qcompiler.quant import maths, signal, spec as spec_module

specs = st.builds(
    lambda bits, signed, symmetric, narrow: QuantSpec(bits=bits, signed=signed or narrow, symmetric=symmetric,
                                                      narrow=narrow and (signed or narrow)),
    st.sampled_from([2, 3, 4, 5, 8]), st.booleans(), st.booleans(), st.booleans())
bounds = st.floats(-1e4, 1e4, allow_nan=False, width=32)
values = hnp.arrays(np.float32, st.integers(1, 64), elements=st.floats(-2e4, 2e4, width=32))


def grid_params(spec: QuantSpec, lo: float, hi: float) -> QuantParams:
    lo, hi = min(lo, hi), max(lo, hi)
    return params_from_range(np.float32(lo), np.float32(hi), spec)


@given(specs, bounds, bounds)
def test_scale_is_finite_positive_and_zero_point_on_grid(spec, lo, hi):
    p = grid_params(spec, lo, hi)
    assert np.isfinite(p.scale) and p.scale > 0
    assert spec.qmin <= int(p.zero_point) <= spec.qmax
    if spec.symmetric:
        assert int(p.zero_point) == 0


@given(specs, bounds, bounds, values)
def test_quantized_values_stay_in_range(spec, lo, hi, x):
    q = quantize(x, grid_params(spec, lo, hi), spec)
    assert q.min() >= spec.qmin and q.max() <= spec.qmax


@given(specs, bounds, bounds)
def test_zero_is_exact(spec, lo, hi):
    p = grid_params(spec, lo, hi)
    assert fake_quantize(np.zeros(3, np.float32), p, spec).tolist() == [0.0, 0.0, 0.0]


@given(specs, bounds, bounds)
def test_values_on_the_grid_survive(spec, lo, hi):
    p = grid_params(spec, lo, hi)
    grid = dequantize(np.arange(spec.qmin, spec.qmax + 1), p, spec)
    assert np.array_equal(fake_quantize(grid, p, spec), grid)


@given(specs, bounds, bounds, values)
def test_fake_quantize_is_idempotent(spec, lo, hi, x):
    p = grid_params(spec, lo, hi)
    once = fake_quantize(x, p, spec)
    assert np.array_equal(fake_quantize(once, p, spec), once)


@given(specs, bounds, bounds, values)
def test_error_inside_the_range_is_at_most_half_a_step(spec, lo, hi, x):
    p = grid_params(spec, lo, hi)
    low, high = float(dequantize(np.array(spec.qmin), p, spec)), float(dequantize(np.array(spec.qmax), p, spec))
    inside = x[(x >= low) & (x <= high)]
    err = np.abs(fake_quantize(inside, p, spec).astype(np.float64) - inside)
    assert np.all(err <= 0.5 * float(p.scale) * (1 + 1e-5) + 1e-30)


@settings(max_examples=50)
@given(specs, bounds, bounds, st.integers(1, 5), hnp.arrays(np.float32, (7, 3), elements=st.floats(-100, 100, width=32)))
def test_per_channel_with_identical_channels_equals_per_tensor(spec, lo, hi, channels, row):
    tensor_params = grid_params(spec, lo, hi)
    per_channel = QuantSpec(spec.bits, spec.signed, spec.symmetric, spec.narrow, axis=1)
    x = np.repeat(row[:, None, :], channels, axis=1)  # shape (7, channels, 3), axis 1 the channel
    lows = np.full(channels, min(lo, hi), np.float32)
    highs = np.full(channels, max(lo, hi), np.float32)
    channel_params = params_from_range(lows, highs, per_channel)
    assert np.array_equal(channel_params.scale, np.full(channels, tensor_params.scale))
    assert np.array_equal(fake_quantize(x, channel_params, per_channel), fake_quantize(x, tensor_params, spec))


def test_rounding_is_half_to_even():
    spec = QuantSpec(8, signed=True, symmetric=True)
    p = QuantParams(np.float32(1.0), np.int32(0))
    assert quantize(np.array([0.5, 1.5, 2.5, -0.5, -1.5], np.float32), p, spec).tolist() == [0, 2, 2, 0, -2]


def test_all_zero_channel_gets_scale_one_with_a_warning(caplog):
    spec = QuantSpec(8, signed=True, symmetric=True, narrow=True, axis=0)
    p = params_from_range(np.array([0.0, -1.0]), np.array([0.0, 1.0]), spec)
    assert p.scale.tolist() == [1.0, np.float32(1 / 127)]
    assert "zero-width range" in caplog.text


def test_invalid_params_are_refused():
    with pytest.raises(ValueError):
        QuantParams(np.float32(0.0), np.int32(0))
    with pytest.raises(ValueError):
        params_from_range(np.float32(np.nan), np.float32(1), QuantSpec())
    with pytest.raises(ValueError):
        QuantSpec(bits=9)


@pytest.mark.parametrize("module", [maths, spec_module, signal])
def test_docstring_examples(module):
    failures, tried = doctest.testmod(module)
    assert tried > 0 and failures == 0
