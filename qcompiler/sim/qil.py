"""QIL's transformers (Jung et al. 2019, "Learning to quantize deep networks by optimizing
quantization intervals with task loss"), as jax functions with straight-through rounding.

Weights: |w| below c - d is pruned to 0, above c + d clipped to 1, and in between mapped to
(alpha |w| + beta) ** gamma with alpha = 0.5 / d, beta = -0.5 c / d + 0.5; the sign is kept and
the result rounded to `levels` steps (2^(b-1) - 1: ternary at 2 bits). The simulated weight is
that code times (c + d) / levels, so the layer keeps the float layer's units and the deployed
weight is an ordinary symmetric integer times a per-channel scale, exactly what was trained.

Activations (unsigned, after a ReLU): the same with gamma = 1, mapped to [0, 1] and rounded to
2^b - 1 steps, i.e. a uniform quantizer of step 2d / levels applied to x - (c - d). The pruning
threshold t = c - d is a shift that qcompiler.sim.training folds into the bias of the layer that
produces the activation (exact, because the quantizer clips at 0 after the ReLU); where there is
no such layer, t stays 0 and only d is learned.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from qcompiler.sim.fake_quant import broadcast_channels, clamp, fake_quant, round_ste

#: The smallest half-width an interval keeps (a zero d would divide by zero).
MIN_DISTANCE = 1e-8


def weight_levels(bits: int) -> int:
    """The largest weight code: 2^(b-1) - 1, so codes are symmetric (-1, 0, 1 at 2 bits)."""
    return 2 ** (bits - 1) - 1


def activation_levels(bits: int) -> int:
    return 2**bits - 1


def safe_power(t, gamma):
    """t ** gamma for t in [0, 1], with finite gradients in t and gamma at t = 0."""
    positive = t > 0
    return jnp.where(positive, jnp.exp(gamma * jnp.log(jnp.where(positive, t, 1.0))), 0.0)


def transform_weight(w, c, d, gamma):
    """QIL's weight transformer: sign(w) * (clip(alpha |w| + beta, 0, 1)) ** gamma, in [-1, 1]."""
    d = jnp.maximum(d, MIN_DISTANCE)
    t = clamp((jnp.abs(w) - c + d) / (2.0 * d), 0.0, 1.0)  # alpha |w| + beta
    return jnp.sign(w) * safe_power(t, gamma)


def weight_codes(w, c, d, gamma, bits: int, axis: int | None):
    """The integer codes of a QIL weight (float, straight-through), c and d per channel along `axis`."""
    c, d = broadcast_channels(c, w.ndim, axis), broadcast_channels(d, w.ndim, axis)
    levels = weight_levels(bits)
    return round_ste(transform_weight(w, c, d, gamma) * levels)


def weight_scale(c, d, bits: int):
    """The deployed weight scale: (c + d) / levels, per channel where c and d are."""
    return (jnp.asarray(c) + jnp.maximum(d, MIN_DISTANCE)) / weight_levels(bits)


def qil_weight(w, c, d, gamma, bits: int, axis: int | None):
    """The simulated quantized weight: codes times (c + d) / levels."""
    scale = broadcast_channels(weight_scale(c, d, bits), w.ndim, axis)
    return weight_codes(w, c, d, gamma, bits, axis) * scale


def activation_step(d, bits: int):
    """The activation's step: the interval's width 2d over its levels."""
    return 2.0 * jnp.maximum(d, MIN_DISTANCE) / activation_levels(bits)


def qil_activation(x, d, bits: int):
    """A QIL activation whose pruning shift has been subtracted upstream: 0 below 0, clipped at 2d."""
    return fake_quant(x, activation_step(d, bits), 0.0, 0, activation_levels(bits))


def initial_weight_interval(w: np.ndarray, bits: int, axis: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(c, d) per channel (per tensor when axis is None) that start QIL at a uniform quantizer:
    c = d (nothing pruned), c + d the clipping point of least squared error over a grid of
    fractions of max |w| (the deployed grid is then round(w / s) * s with s = (c + d) / levels)."""
    moved = np.moveaxis(w, axis, 0) if axis is not None else w.reshape(1, -1)
    rows = np.abs(moved.reshape(len(moved), -1)).astype(np.float64)
    peak = np.maximum(rows.max(axis=1, keepdims=True), 1e-12)
    levels = weight_levels(bits)
    best, best_error = peak[:, 0], np.full(len(rows), np.inf)
    for fraction in np.linspace(0.05, 1.0, 96):
        clip = peak * fraction
        step = clip / levels
        quantized = np.minimum(np.rint(rows / step), levels) * step
        error = np.square(rows - quantized).sum(axis=1)
        better = error < best_error
        best, best_error = np.where(better, clip[:, 0], best), np.where(better, error, best_error)
    half = (best / 2).astype(np.float32)
    return (half, half.copy()) if axis is not None else (half[0], half[0].copy())


def pruned_fraction(w: np.ndarray, c, d, axis: int | None) -> tuple[float, float]:
    """The fraction of a weight's values pruned (|w| < c - d) and clipped (|w| > c + d)."""
    c, d = (np.asarray(broadcast_channels(v, w.ndim, axis)) for v in (c, d))
    d = np.maximum(d, MIN_DISTANCE)
    magnitude = np.abs(w)
    return float(np.mean(magnitude < c - d)), float(np.mean(magnitude > c + d))
