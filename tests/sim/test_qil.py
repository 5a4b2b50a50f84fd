"""QIL's transformers (qcompiler.sim.qil): values and thresholds as the paper derives them, and
gradients with respect to c, d and gamma against finite differences."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qcompiler.sim import qil

RNG = np.random.default_rng(3)


def _finite_difference(f, x, eps=1e-3):
    return (f(x + eps) - f(x - eps)) / (2 * eps)


def test_gamma_one_prunes_below_c_minus_d_clips_above_c_plus_d_and_is_linear_between():
    c, d = 0.5, 0.2
    w = np.array([-0.9, -0.7, -0.5, -0.31, -0.29, 0.0, 0.29, 0.31, 0.4, 0.6, 0.7, 0.71, 2.0], np.float32)
    t = np.asarray(qil.transform_weight(w, c, d, 1.0))
    alpha, beta = 0.5 / d, -0.5 * c / d + 0.5  # the paper's
    expected = np.sign(w) * np.clip(alpha * np.abs(w) + beta, 0, 1)
    np.testing.assert_allclose(t, expected, atol=1e-6)
    assert np.all(t[np.abs(w) < c - d] == 0)  # pruned
    assert np.all(np.abs(t[np.abs(w) > c + d]) == 1)  # clipped
    assert -alpha * (c - d) == pytest.approx(beta) and alpha * (c + d) + beta == pytest.approx(1)


def test_weight_starts_as_symmetric_nearest_rounding():
    """With c = d and gamma = 1 the QIL weight is round(w / s) * s, s = (c + d) / levels, clipped."""
    w = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)
    for bits in (2, 3, 4, 8):
        c, d = qil.initial_weight_interval(w, bits, 0)
        ours = np.asarray(qil.qil_weight(w, c, d, 1.0, bits, 0))
        s = ((c + d) / qil.weight_levels(bits)).reshape(-1, 1, 1, 1)
        levels = qil.weight_levels(bits)
        np.testing.assert_allclose(ours, np.clip(np.rint(w / s), -levels, levels) * s, rtol=1e-5, atol=1e-7)


def test_initial_interval_is_the_least_squares_clip_of_the_grid():
    w = RNG.standard_normal((2, 64)).astype(np.float32)
    c, d = qil.initial_weight_interval(w, 2, 0)
    def error(clip, row):
        return np.sum(np.square(row - np.clip(np.rint(row / clip), -1, 1) * clip))
    for row, best in zip(w, c + d):
        grid = min(error(f * np.abs(row).max(), row) for f in np.linspace(0.05, 1, 96))
        assert error(float(best), row) <= grid * (1 + 1e-4)


@pytest.mark.parametrize("gamma", [0.6, 1.0, 1.7])
def test_transformer_gradients_match_finite_differences(gamma):
    """d/dc, d/dd and d/dgamma of sum(r * T(w)) for values inside the interval (outside, T is
    constant in them except through the sign)."""
    c, d = 0.5, 0.3
    w = RNG.uniform(0.25, 0.75, 40).astype(np.float32) * RNG.choice([-1, 1], 40)
    r = RNG.standard_normal(40).astype(np.float32)

    def f(c_, d_, g_):
        return jnp.sum(r * qil.transform_weight(w, c_, d_, g_))

    grads = jax.grad(f, argnums=(0, 1, 2))(c, d, gamma)
    as64 = lambda c_, d_, g_: float(np.sum(r.astype(np.float64) * np.sign(w) * np.clip(
        (np.abs(w) - c_ + d_) / (2 * d_), 0, 1) ** g_))
    expected = (_finite_difference(lambda v: as64(v, d, gamma), c), _finite_difference(lambda v: as64(c, v, gamma), d),
                _finite_difference(lambda v: as64(c, d, v), gamma))
    np.testing.assert_allclose(np.array(grads, np.float64), expected, rtol=2e-3, atol=1e-4)


def test_pruned_values_have_finite_gradients_for_gamma_below_one():
    w = np.array([0.0, 0.01, 0.2, 0.9], np.float32)
    grads = jax.grad(lambda c, d, g: jnp.sum(qil.qil_weight(w, c, d, g, 4, None)), argnums=(0, 1, 2))(0.4, 0.3, 0.5)
    assert all(np.isfinite(float(g)) for g in grads)


def test_straight_through_rounding_passes_the_interval_gradient():
    """d/dd of the rounded activation equals the gradient of its un-rounded interior (STE), and
    values above c + d = 2d have gradient through the clip level only."""
    x = np.array([0.1, 0.5, 0.9, 3.0], np.float32)
    grad = jax.grad(lambda d: jnp.sum(qil.qil_activation(x, d, 4)))(0.5)
    # inside: q = round(x/s), value q*s: d(value)/dd = (round(x/s) - x/s) * ds/dd; clipped: levels * ds/dd
    s, ds = 2 * 0.5 / 15, 2 / 15
    expected = sum(np.rint(v / s) - v / s for v in x[:3]) * ds + 15 * ds
    assert float(grad) == pytest.approx(expected, rel=1e-4)


def test_pruned_fraction_counts_below_and_above():
    w = np.array([[0.05, 0.2, 0.5, 1.0]], np.float32)
    assert qil.pruned_fraction(w, np.array([0.4]), np.array([0.3]), 0) == (0.25, 0.25)
