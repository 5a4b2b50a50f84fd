"""Gradients of the differentiable quantizers against finite differences, where they are defined
(away from rounding boundaries and clipping edges), and their forward values against numpy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qcompiler.quant.maths import fake_quantize, params_from_range
from qcompiler.quant.spec import QuantSpec
from qcompiler.sim.fake_quant import (adaround_init, adaround_weight, fake_quant, rectified_sigmoid,
                                      rounding_regularizer)

jax.config.update("jax_enable_x64", False)
RNG = np.random.default_rng(1)


def _finite_difference(f, x, eps=1e-3):
    x = np.asarray(x, np.float64)
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        step = np.zeros_like(x)
        step[i] = eps
        grad[i] = (f(x + step) - f(x - step)) / (2 * eps)
    return grad


def test_fake_quant_forward_equals_numpy_reference():
    spec = QuantSpec(bits=8, signed=True, symmetric=True, narrow=True, axis=0)
    w = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)
    params = params_from_range(w.reshape(4, -1).min(1), w.reshape(4, -1).max(1), spec)
    ours = fake_quant(w, params.scale, params.zero_point, spec.qmin, spec.qmax, 0)
    np.testing.assert_array_equal(np.asarray(ours), fake_quantize(w, params, spec))


def test_straight_through_gradient_is_one_inside_zero_outside():
    x = jnp.array([-3.0, -0.26, 0.1, 0.74, 5.0])
    grad = jax.grad(lambda v: jnp.sum(fake_quant(v, 0.5, 2.0, 0, 7)))(x)  # range [-1.0, 2.5]
    np.testing.assert_array_equal(np.asarray(grad), [0, 1, 1, 1, 0])


def test_scale_gradient_is_lsqs_and_exact_where_values_clip():
    x = np.array([0.13, 0.61, 1.37, 2.2, 9.0], np.float32)  # the last one clips at qmax
    qmin, qmax, zero = 0, 15, 0.0

    def loss(s):
        return jnp.sum(fake_quant(jnp.asarray(x), s, zero, qmin, qmax) * jnp.arange(1.0, 6.0))

    s = 0.3
    grad = float(jax.grad(loss)(jnp.float32(s)))
    v = x / s
    lsq = np.where(v >= qmax, qmax, np.round(v) - v)  # d/ds of s * round(x/s) with STE
    assert grad == pytest.approx(float(np.sum(lsq * np.arange(1.0, 6.0))), rel=1e-5)
    # Finite differences see s * round(x/s) as k * s (slope round(v), not round(v) - v): the
    # straight-through estimate is not the true derivative, except where x clips: slope qmax - z.
    def clipped(s):
        return jnp.sum(fake_quant(jnp.asarray(x[4:]), s, zero, qmin, qmax))

    fd = (float(clipped(jnp.float32(s + 1e-3))) - float(clipped(jnp.float32(s - 1e-3)))) / 2e-3
    assert float(jax.grad(clipped)(jnp.float32(s))) == pytest.approx(fd, rel=1e-3) == qmax - zero


def test_adaround_starts_at_the_float_weight_and_its_gradient_matches_finite_differences():
    w = RNG.standard_normal((3, 4)).astype(np.float32)
    scale = np.array([0.1, 0.2, 0.05], np.float32)
    v = adaround_init(w, scale, 0)
    soft = adaround_weight(w, v, scale, 0.0, -127, 127, 0)
    np.testing.assert_allclose(np.asarray(soft), w, atol=1e-5)

    target = RNG.standard_normal((3, 4))

    def loss(v64):
        return float(jnp.sum((adaround_weight(w, jnp.asarray(v64, jnp.float32), scale, 0.0, -127, 127, 0)
                              - target) ** 2))

    v_probe = np.asarray(v) * 0.5  # away from the clip of h at 0 and 1
    grad = jax.grad(lambda vv: jnp.sum((adaround_weight(w, vv, scale, 0.0, -127, 127, 0) - target) ** 2))(
        jnp.asarray(v_probe, jnp.float32))
    np.testing.assert_allclose(np.asarray(grad), _finite_difference(loss, v_probe, 1e-2), rtol=2e-2, atol=1e-3)


def test_hard_rounding_rounds_up_where_v_is_non_negative():
    w = np.array([[0.12, 0.18, -0.12]], np.float32)
    v = np.array([[1.0, -1.0, 0.0]], np.float32)
    hard = adaround_weight(w, v, np.array([0.1], np.float32), 0.0, -7, 7, 0, hard=True)
    np.testing.assert_allclose(np.asarray(hard), [[0.2, 0.1, -0.1]], atol=1e-7)


def test_regularizer_is_zero_at_binary_rounding_and_its_gradient_matches_finite_differences():
    assert float(rounding_regularizer(jnp.array([-20.0, 20.0]), 2.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(rectified_sigmoid(jnp.float32(0.0))) == pytest.approx(0.5)
    v = np.array([-0.7, 0.2, 1.1], np.float32)
    grad = jax.grad(lambda vv: rounding_regularizer(vv, 3.0))(jnp.asarray(v))
    fd = _finite_difference(lambda vv: float(rounding_regularizer(jnp.asarray(vv, jnp.float32), 3.0)), v, 1e-2)
    np.testing.assert_allclose(np.asarray(grad), fd, rtol=2e-2)


def test_a_learned_step_driven_below_zero_stays_a_finite_share_of_its_start():
    """Adam moves a step size by about its learning rate whatever the step's size: a small one
    goes below zero. merge_learned keeps it at MIN_STEP_SHARE of where it started, where the
    LSQ gradient is finite (at the float32 floor it was not, and the step became NaN)."""
    from qcompiler.sim.reconstruction import MIN_STEP_SHARE, merge_learned

    params = {"act": {"g": (jnp.float32(0.05), jnp.int32(0))}, "rounding": {}}
    x = jnp.asarray(RNG.normal(0, 3, 64), jnp.float32)

    def loss(step):
        scale, zero_point = merge_learned(params, {"steps": {"g": step}})["act"]["g"]
        return jnp.sum((fake_quant(x, scale, zero_point, 0, 255) - x) ** 2)

    merged = merge_learned(params, {"steps": {"g": jnp.float32(-0.2)}})["act"]["g"][0]
    assert float(merged) == pytest.approx(0.05 * MIN_STEP_SHARE)
    for step in (-0.2, 0.0, 1e-30, 0.04):
        value, grad = jax.value_and_grad(loss)(jnp.float32(step))
        assert np.isfinite(float(value)) and np.isfinite(float(grad)), step


def test_nearest_rounding_as_v_computes_round_to_nearest_through_the_hard_hook():
    """The held-out guard gives each block's weights this V before AdaRound learns one (one jitted
    structure for every phase): the hard hook must then compute exactly round-to-nearest, with
    ties (x.5, which jnp.round sends to even), clipped values, and each channel's largest weight
    over its max/qmax scale, an integer quotient where numpy's and XLA's divisions can differ."""
    from types import SimpleNamespace

    from qcompiler.sim.quantized import nearest_rounding

    w = RNG.normal(0.0, 1.0, (64, 4, 3, 3)).astype(np.float32)
    scale = (np.abs(w).max(axis=(1, 2, 3)) / 7).astype(np.float32)
    w[0, 0, 0, :2] = scale[0] * np.float32(2.5), scale[0] * np.float32(-3.5)   # ties
    w[1, 0, 0, 0] = scale[1] * -40                                            # clipped at qmin
    params = {"weights": {"w": jnp.asarray(w)}, "weight_q": {"w": (jnp.asarray(scale), jnp.zeros(64))}}
    quant = {"w": SimpleNamespace(spec=SimpleNamespace(axis=0))}
    v = nearest_rounding(params, quant, ["w"])["w"]
    hook = jax.jit(lambda w, v, s: adaround_weight(w, v, s, jnp.zeros(64), -8, 7, 0, hard=True))
    nearest = jax.jit(lambda w, s: fake_quant(w, s, jnp.zeros(64), -8, 7, 0))
    np.testing.assert_array_equal(np.asarray(hook(jnp.asarray(w), v, jnp.asarray(scale))),
                                  np.asarray(nearest(jnp.asarray(w), jnp.asarray(scale))))
    assert np.asarray(v).dtype == np.float32 and set(np.unique(np.asarray(v))) == {-10.0, 10.0}


def test_learned_integers_and_their_v_agree_with_the_hard_hook_at_integer_quotients():
    """The exported integers (learned_integers) and the V read back from them (_rounding_as_v)
    must be the ones the hard hook simulated, also at each channel's largest weight over its
    max/qmax scale: an integer quotient, whose floor moves if the division's last bit differs."""
    from types import SimpleNamespace

    from qcompiler.sim.quantized import _rounding_as_v, learned_integers

    w = RNG.normal(0.0, 1.0, (256, 4, 3, 3)).astype(np.float32)
    scale = (np.abs(w).max(axis=(1, 2, 3)) / 7).astype(np.float32)
    v = jnp.asarray(np.where(RNG.random(w.shape) < 0.5, 10.0, -10.0).astype(np.float32))
    zero = jnp.zeros(256)
    params = {"weights": {"w": jnp.asarray(w)}, "weight_q": {"w": (jnp.asarray(scale), zero)}, "rounding": {"w": v}}
    spec = SimpleNamespace(axis=0, qmin=-8, qmax=7)
    simulated = jax.jit(lambda w, v, s: adaround_weight(w, v, s, zero, -8, 7, 0, hard=True))(
        jnp.asarray(w), v, jnp.asarray(scale))
    expected = np.rint(np.asarray(simulated) / scale[:, None, None, None]).astype(np.int32)
    integers = learned_integers(params, {"w": SimpleNamespace(spec=spec)})["w"]
    np.testing.assert_array_equal(integers, expected)
    tq = SimpleNamespace(spec=spec, rounded=integers, params=SimpleNamespace(scale=scale, zero_point=np.zeros(256)))
    again = jax.jit(lambda w, v, s: adaround_weight(w, v, s, zero, -8, 7, 0, hard=True))(
        jnp.asarray(w), _rounding_as_v(w, tq), jnp.asarray(scale))
    np.testing.assert_array_equal(np.asarray(again), np.asarray(simulated))
