"""Differentiable quantizers in jax: fake-quant with a straight-through estimator, the LSQ step
size gradient, and AdaRound's learned rounding.

All round half to even (jnp.round), as QuantizeLinear does, so that a simulated model and its
QDQ export agree exactly where float32 arithmetic agrees.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

#: AdaRound's rectified sigmoid stretch (Nagel et al. 2020; BRECQ's defaults).
ZETA, GAMMA = 1.1, -0.1


@jax.custom_jvp
def round_ste(x):
    """Round half to even; its gradient is taken as 1 (the straight-through estimator)."""
    return jnp.round(x)


@round_ste.defjvp
def _round_ste_jvp(primals, tangents):
    return jnp.round(primals[0]), tangents[0]


def clamp(q, lo, hi):
    """clip(q, lo, hi) whose gradient is 1 up to and including the bounds (jnp.clip halves it
    there: a value rounded exactly to the zero point, e.g. after a ReLU, would learn half as fast)."""
    return jnp.where(q < lo, lo, jnp.where(q > hi, hi, q))


def broadcast_channels(values, ndim: int, axis: int | None):
    """Per-channel values shaped to broadcast along `axis` of an ndim-dimensional tensor."""
    values = jnp.asarray(values, jnp.float32)
    if axis is None or values.ndim == 0:
        return values
    return values.reshape([-1 if i == axis % ndim else 1 for i in range(ndim)])


def fake_quant(x, scale, zero_point, qmin: int, qmax: int, axis: int | None = None):
    """dequantize(quantize(x)) with straight-through rounding.

    The gradient with respect to x is 1 inside the clipping range and 0 outside; with respect
    to the scale it is LSQ's (round(x/s) - x/s inside, qmin - z or qmax - z outside), because
    the clip is applied to the integer after the straight-through round.
    """
    s = broadcast_channels(scale, x.ndim, axis)
    z = broadcast_channels(zero_point, x.ndim, axis)
    q = clamp(round_ste(x / s) + z, qmin, qmax)
    return (q - z) * s


def rectified_sigmoid(v):
    """AdaRound's h(V) = clip(sigmoid(V) * (zeta - gamma) + gamma, 0, 1)."""
    return jnp.clip(jax.nn.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def adaround_init(w, scale, axis: int):
    """V such that h(V) equals the fractional part of w / s: the soft weight starts at w itself."""
    s = broadcast_channels(scale, w.ndim, axis)
    rest = w / s - jnp.floor(w / s)
    rest = jnp.clip(rest, 1e-6, 1 - 1e-6)
    return -jnp.log((ZETA - GAMMA) / (rest - GAMMA) - 1.0)


def adaround_weight(w, v, scale, zero_point, qmin: int, qmax: int, axis: int, hard: bool = False):
    """s * (clip(floor(w / s) + h(V) + z, qmin, qmax) - z); `hard` rounds up where V >= 0 (h >= 0.5)."""
    s = broadcast_channels(scale, w.ndim, axis)
    z = broadcast_channels(zero_point, w.ndim, axis)
    up = (v >= 0).astype(jnp.float32) if hard else rectified_sigmoid(v)
    q = clamp(jnp.floor(w / s) + up + z, qmin, qmax)
    return (q - z) * s


def rounding_regularizer(v, beta):
    """sum(1 - |2 h(V) - 1| ** beta): pushes every h(V) to 0 or 1 as beta anneals down."""
    return jnp.sum(1.0 - jnp.abs(2.0 * rectified_sigmoid(v) - 1.0) ** beta)
