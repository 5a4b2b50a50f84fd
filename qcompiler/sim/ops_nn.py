"""Convolution, pooling and normalization in jax, with ONNX's attribute semantics (NC... layout).

Each function takes the node's input arrays (None for an omitted optional input) and its
attributes, and returns its outputs as a tuple. Shapes are static: a jitted function is traced
once per input shape.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
from jax import lax


def _spatial(attrs: dict, name: str, rank: int, default: int) -> list[int]:
    return list(attrs.get(name, [default] * rank))


def explicit_pads(attrs: dict, in_sizes, kernel, strides, dilations) -> list[tuple[int, int]]:
    """(begin, end) padding per spatial axis from `pads` or `auto_pad` (SAME_UPPER/SAME_LOWER/VALID)."""
    rank = len(kernel)
    auto = attrs.get("auto_pad", "NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads = []
        for size, k, s, d in zip(in_sizes, kernel, strides, dilations):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            small, large = total // 2, total - total // 2
            pads.append((small, large) if auto == "SAME_UPPER" else (large, small))
        return pads
    if auto == "VALID":
        return [(0, 0)] * rank
    flat = _spatial(attrs, "pads", 2 * rank, 0)
    return list(zip(flat[:rank], flat[rank:]))


def _depthwise(x, w, strides, pads, dilations):
    """A 2-D depthwise convolution as a sum of kh * kw shifted, strided slices times per-channel
    weights: the same numbers as lax.conv, and its gradient 5-8x faster on CPU (measured on
    MobileNetV2 shapes: XLA's grouped-convolution gradient is slow), which BRECQ needs."""
    multiplier = w.shape[0] // x.shape[1]
    x = jnp.repeat(x, multiplier, axis=1) if multiplier > 1 else x
    x = jnp.pad(x, [(0, 0), (0, 0), *pads])
    n, c, h, width = x.shape
    kh, kw = w.shape[2:]
    out_h = (h - (kh - 1) * dilations[0] - 1) // strides[0] + 1
    out_w = (width - (kw - 1) * dilations[1] - 1) // strides[1] + 1
    y = 0.0
    for i in range(kh):
        for j in range(kw):
            top, left = i * dilations[0], j * dilations[1]
            window = lax.slice(x, (0, 0, top, left), (n, c, top + (out_h - 1) * strides[0] + 1,
                                                      left + (out_w - 1) * strides[1] + 1), (1, 1, *strides))
            y = y + window * w[:, 0, i, j].reshape(1, -1, 1, 1)
    return y


def conv(x, w, b=None, **attrs):
    rank = w.ndim - 2
    kernel = list(w.shape[2:])
    strides, dilations = _spatial(attrs, "strides", rank, 1), _spatial(attrs, "dilations", rank, 1)
    pads = explicit_pads(attrs, x.shape[2:], kernel, strides, dilations)
    groups = int(attrs.get("group", 1))
    if rank == 2 and groups == x.shape[1] and w.shape[1] == 1 and groups > 1:
        y = _depthwise(x, w, strides, pads, dilations)
        return (y if b is None else y + b.reshape(1, -1, 1, 1),)
    y = lax.conv_general_dilated(x, w, strides, pads, rhs_dilation=dilations,
                                 feature_group_count=int(attrs.get("group", 1)),
                                 precision=lax.Precision.HIGHEST)
    return (y if b is None else y + b.reshape((1, -1) + (1,) * rank),)


def conv_transpose(x, w, b=None, **attrs):
    """A transposed convolution as a convolution of the stride-dilated input with the flipped,
    group-transposed kernel: out = (in - 1) * s + (k - 1) * d + 1 - pad_begin - pad_end + output_padding."""
    rank = w.ndim - 2
    groups = int(attrs.get("group", 1))
    strides, dilations = _spatial(attrs, "strides", rank, 1), _spatial(attrs, "dilations", rank, 1)
    out_pad = _spatial(attrs, "output_padding", rank, 0)
    pads = _spatial(attrs, "pads", 2 * rank, 0)
    c_in, c_out_g = w.shape[0], w.shape[1]
    kernel = w.reshape((groups, c_in // groups, c_out_g) + w.shape[2:])
    kernel = jnp.swapaxes(kernel, 1, 2).reshape((groups * c_out_g, c_in // groups) + w.shape[2:])
    kernel = jnp.flip(kernel, axis=tuple(range(2, 2 + rank)))
    span = [(k - 1) * d for k, d in zip(w.shape[2:], dilations)]
    padding = [(s - pads[i], s - pads[rank + i] + out_pad[i]) for i, s in enumerate(span)]
    y = lax.conv_general_dilated(x, kernel, [1] * rank, padding, lhs_dilation=strides, rhs_dilation=dilations,
                                 feature_group_count=groups, precision=lax.Precision.HIGHEST)
    return (y if b is None else y + b.reshape((1, -1) + (1,) * rank),)


def _pool_geometry(x, attrs):
    kernel = list(attrs["kernel_shape"])
    rank = len(kernel)
    strides, dilations = _spatial(attrs, "strides", rank, 1), _spatial(attrs, "dilations", rank, 1)
    pads = explicit_pads(attrs, x.shape[2:], kernel, strides, dilations)
    extra = [0] * rank  # ceil_mode: pad the end so that a last partial window exists
    if attrs.get("ceil_mode", 0):
        for i, (size, k, s, d) in enumerate(zip(x.shape[2:], kernel, strides, dilations)):
            span = size + pads[i][0] + pads[i][1] - ((k - 1) * d + 1)
            out = math.ceil(span / s) + 1
            if (out - 1) * s >= size + pads[i][0]:  # a window may not start in the end padding
                out -= 1
            extra[i] = max((out - 1) * s + (k - 1) * d + 1 - (size + pads[i][0] + pads[i][1]), 0)
    return kernel, strides, dilations, pads, extra


def _window(x, init, op, kernel, strides, dilations, padding):
    return lax.reduce_window(x, init, op, (1, 1, *kernel), (1, 1, *strides), [(0, 0), (0, 0), *padding],
                             window_dilation=(1, 1, *dilations))


def max_pool(x, **attrs):
    kernel, strides, dilations, pads, extra = _pool_geometry(x, attrs)
    padding = [(b, e + x_) for (b, e), x_ in zip(pads, extra)]
    return (_window(x, -jnp.inf, lax.max, kernel, strides, dilations, padding),)


def average_pool(x, **attrs):
    """Window sums over window counts; with count_include_pad the explicit pads count, never the
    ceil_mode overhang (as onnxruntime does)."""
    kernel, strides, dilations, pads, extra = _pool_geometry(x, attrs)
    padding = [(b, e + x_) for (b, e), x_ in zip(pads, extra)]
    sums = _window(x, 0.0, lax.add, kernel, strides, dilations, padding)
    ones = np.ones((1, 1, *x.shape[2:]), np.float32)
    if attrs.get("count_include_pad", 0):
        ones = np.pad(ones, [(0, 0), (0, 0), *pads], constant_values=1.0)
        padding = [(0, x_) for x_ in extra]
    counts = _window(jnp.asarray(ones), 0.0, lax.add, kernel, strides, dilations, padding)
    return (sums / counts,)


def global_average_pool(x):
    return (jnp.mean(x, axis=tuple(range(2, x.ndim)), keepdims=True),)


def global_max_pool(x):
    return (jnp.max(x, axis=tuple(range(2, x.ndim)), keepdims=True),)


def _normalize(x, axes: tuple[int, ...], epsilon: float):
    """(x - mean) / sqrt(var + epsilon) over `axes`, with the mean and 1 / sqrt(var + epsilon)."""
    mean = jnp.mean(x, axis=axes, keepdims=True)
    inv_std = lax.rsqrt(jnp.mean(jnp.square(x - mean), axis=axes, keepdims=True) + epsilon)
    return (x - mean) * inv_std, mean, inv_std


def layer_normalization(x, scale, bias=None, axis=-1, epsilon=1e-5, stash_type=1):
    """LayerNormalization (opset 17) over the axes from `axis` on; also its Mean and InvStdDev outputs."""
    y, mean, inv_std = _normalize(x, tuple(range(axis % x.ndim, x.ndim)), epsilon)
    y = y * scale
    return (y if bias is None else y + bias), mean, inv_std


def instance_normalization(x, scale, bias, epsilon=1e-5):
    y = _normalize(x, tuple(range(2, x.ndim)), epsilon)[0]
    channels = (1, -1) + (1,) * (x.ndim - 2)
    return (y * scale.reshape(channels) + bias.reshape(channels),)


def _conv_transpose_check(attrs: dict, inputs: list) -> str | None:
    if "output_shape" in attrs or attrs.get("auto_pad", "NOTSET") != "NOTSET":
        return "output_shape/auto_pad"
    return None


NN_OPS = {
    "Conv": conv,
    "ConvTranspose": conv_transpose,
    "MaxPool": max_pool,
    "AveragePool": average_pool,
    "GlobalAveragePool": global_average_pool,
    "GlobalMaxPool": global_max_pool,
    "LayerNormalization": layer_normalization,
    "InstanceNormalization": instance_normalization,
}

NN_CHECKS = {"ConvTranspose": _conv_transpose_check}
