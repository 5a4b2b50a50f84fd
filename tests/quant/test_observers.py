"""Each observer against a numpy reference on known distributions, streamed in batches."""

from __future__ import annotations

import numpy as np
import pytest

from qcompiler.quant import QuantSpec, fake_quantize, params_from_range
from qcompiler.quant.observers import (
    BINS,
    CLIP_RATIOS,
    EmaMinMaxObserver,
    KlObserver,
    LpObserver,
    MinMaxObserver,
    PercentileObserver,
    weight_range,
)

RNG = np.random.default_rng(0)
SPEC = QuantSpec(bits=8, signed=False)


def stream(observer, x, batches=8):
    for part in np.array_split(x, batches):
        observer.observe(part)
    if observer.two_pass:
        for part in np.array_split(x, batches):
            observer.observe_again(part)
    return observer.range(SPEC)


def lp_error(x, lo, hi, spec=SPEC, p=2.4):
    params = params_from_range(np.float32(lo), np.float32(hi), spec)
    return float(np.sum(np.abs(x - fake_quantize(x, params, spec)) ** p))


def test_minmax_is_the_exact_range():
    x = RNG.normal(size=(64, 100)).astype(np.float32)
    assert stream(MinMaxObserver(), x) == (float(x.min()), float(x.max()))


def test_ema_follows_its_recurrence():
    x = RNG.normal(size=(8, 100)).astype(np.float32)
    lo, hi = float(x[0].min()), float(x[0].max())
    for row in x[1:]:
        lo, hi = 0.9 * lo + 0.1 * float(row.min()), 0.9 * hi + 0.1 * float(row.max())
    got = stream(EmaMinMaxObserver(), x, batches=8)
    assert got == pytest.approx((lo, hi), rel=1e-12)


@pytest.mark.parametrize("percentile", [99.0, 99.9, 99.99])
def test_percentile_matches_numpy_within_a_bin(percentile):
    x = RNG.laplace(size=200_000).astype(np.float32)
    lo, hi = stream(PercentileObserver(percentile), x)
    width = float(x.max() - x.min()) / BINS
    assert hi == pytest.approx(np.percentile(x, percentile), abs=2 * width)
    assert lo == pytest.approx(np.percentile(x, 100 - percentile), abs=2 * width)


def test_percentile_of_a_nonnegative_tensor_keeps_zero():
    x = np.maximum(RNG.normal(size=50_000), 0).astype(np.float32)
    lo, _ = stream(PercentileObserver(), x)
    assert lo == 0.0


@pytest.mark.parametrize("p", [2.0, 2.4])
def test_lp_search_matches_a_search_on_the_raw_values(p):
    """The histogram-based choice is as good, on the raw data, as the exact search's (within 2%)."""
    x = np.concatenate([RNG.normal(size=100_000), [25.0, -30.0]]).astype(np.float32)
    lo, hi = stream(LpObserver(p), x)
    exact = min(lp_error(x, x.min() * r, x.max() * r, p=p) for r in CLIP_RATIOS)
    assert lp_error(x, lo, hi, p=p) <= 1.02 * exact
    assert hi < x.max()  # the outliers are clipped


def test_kl_keeps_a_uniform_range_and_clips_a_heavy_tail():
    uniform = RNG.uniform(0, 1, 100_000).astype(np.float32)
    _, hi = stream(KlObserver(), uniform)
    assert hi >= 0.95 * uniform.max()
    heavy = np.abs(RNG.standard_cauchy(100_000)).astype(np.float32)
    _, hi = stream(KlObserver(), heavy)
    assert np.percentile(heavy, 50) < hi < 0.5 * heavy.max()


def test_kl_signed_tensor_is_symmetric_around_zero():
    x = RNG.laplace(size=100_000).astype(np.float32)
    lo, hi = stream(KlObserver(), x)
    assert lo < 0 < hi
    threshold = max(-lo, hi)  # one threshold for both signs, cut to the data's own bounds
    assert lo == pytest.approx(max(float(x.min()), -threshold))
    assert hi == pytest.approx(min(float(x.max()), threshold))
    assert threshold < max(-float(x.min()), float(x.max()))


def test_weight_minmax_per_channel():
    w = RNG.normal(size=(6, 4, 3, 3)).astype(np.float32)
    lo, hi = weight_range(w, QuantSpec(8, True, True, True, axis=0, observer="minmax"))
    assert np.array_equal(lo, w.reshape(6, -1).min(1)) and np.array_equal(hi, w.reshape(6, -1).max(1))
    lo1, hi1 = weight_range(w, QuantSpec(8, True, True, True, axis=1, observer="minmax"))
    assert np.array_equal(hi1, w.max(axis=(0, 2, 3)))


def test_weight_lp_per_channel_never_worse_than_minmax():
    w = RNG.standard_t(3, size=(8, 64)).astype(np.float32)
    spec = QuantSpec(4, True, True, True, axis=0, observer="lp")
    lo, hi = weight_range(w, spec)
    row_spec = QuantSpec(4, True, True, True)
    for c in range(8):
        chosen = lp_error(w[c], lo[c], hi[c], row_spec)
        assert chosen <= lp_error(w[c], w[c].min(), w[c].max(), row_spec) + 1e-9
        assert chosen == pytest.approx(min(lp_error(w[c], w[c].min() * r, w[c].max() * r, row_spec) for r in CLIP_RATIOS))


def test_kl_ignores_the_zero_spike_of_a_relu_output():
    """Half the values exactly 0 (a ReLU): the threshold still covers the bulk of the positives."""
    x = np.maximum(RNG.normal(size=200_000), 0).astype(np.float32)
    _, hi = stream(KlObserver(), x)
    assert hi >= np.percentile(x[x > 0], 99)
