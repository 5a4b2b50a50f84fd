"""Elementwise, linear-algebra and layout ops in jax, with ONNX semantics.

Inputs that fix a shape (Reshape's shape, Pad's pads, Squeeze's axes, ...) must be constants:
the interpreter passes them as numpy arrays, so shapes stay static under jit.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


def gemm(a, b, c=None, alpha=1.0, beta=1.0, transA=0, transB=0):
    a = a.T if transA else a
    b = b.T if transB else b
    y = alpha * jnp.matmul(a, b, precision=lax.Precision.HIGHEST)
    return (y if c is None else y + beta * c,)


def matmul(a, b):
    return (jnp.matmul(a, b, precision=lax.Precision.HIGHEST),)


def clip(x, lo=None, hi=None, min=None, max=None):  # noqa: A002 - ONNX's attribute names (opset < 11)
    lo = min if lo is None else lo
    hi = max if hi is None else hi
    if lo is not None:
        x = jnp.maximum(x, lo)
    return (x if hi is None else jnp.minimum(x, hi),)


def hard_sigmoid(x, alpha=0.2, beta=0.5):
    return (jnp.clip(alpha * x + beta, 0.0, 1.0),)


def hard_swish(x):
    return (x * jnp.clip(x / 6.0 + 0.5, 0.0, 1.0),)


def leaky_relu(x, alpha=0.01):
    return (jnp.where(x >= 0, x, alpha * x),)


def softmax(x, axis=None, opset=13):
    """Opset 13 normalizes along `axis` (default -1); older opsets over the flattened trailing axes."""
    if opset >= 13:
        return (jax.nn.softmax(x, axis=-1 if axis is None else axis),)
    axis = 1 if axis is None else axis % x.ndim
    flat = x.reshape((int(np.prod(x.shape[:axis])), -1))
    return (jax.nn.softmax(flat, axis=1).reshape(x.shape),)


def flatten(x, axis=1):
    axis = axis % x.ndim if x.ndim else 0
    return (x.reshape((int(np.prod(x.shape[:axis])), -1)),)


def reshape(x, shape, allowzero=0):
    target = [int(s) for s in np.asarray(shape)]
    if not allowzero:
        target = [x.shape[i] if s == 0 else s for i, s in enumerate(target)]
    return (x.reshape(target),)


def transpose(x, perm=None):
    return (jnp.transpose(x, perm),)


def concat(*xs, axis):
    return (jnp.concatenate(xs, axis=axis),)


def _axes(axes_input, axes_attr):
    axes = axes_input if axes_input is not None else axes_attr
    return None if axes is None else [int(a) for a in np.asarray(axes).reshape(-1)]


def squeeze(x, axes=None, **attrs):
    axes = _axes(axes, attrs.get("axes"))
    return (jnp.squeeze(x, axis=None if axes is None else tuple(a % x.ndim for a in axes)),)


def unsqueeze(x, axes=None, **attrs):
    axes = _axes(axes, attrs.get("axes"))
    rank = x.ndim + len(axes)
    for a in sorted(a % rank for a in axes):
        x = jnp.expand_dims(x, a)
    return (x,)


def pad(x, pads=None, constant_value=None, axes=None, mode="constant", **attrs):
    """Pad (opset >= 11: pads as an input; opset 2: as an attribute), constant/reflect/edge."""
    flat = [int(p) for p in np.asarray(pads if pads is not None else attrs["pads"]).reshape(-1)]
    mode = mode.decode() if isinstance(mode, bytes) else mode
    axes = _axes(axes, None) or list(range(x.ndim))
    half = len(flat) // 2
    widths = [(0, 0)] * x.ndim
    for i, a in enumerate(axes):
        widths[a % x.ndim] = (flat[i], flat[half + i])
    value = attrs.get("value", 0.0) if constant_value is None else constant_value
    if min(min(w) for w in widths) < 0:
        raise ValueError("negative pads")
    if mode == "constant":
        return (jnp.pad(x, widths, constant_values=jnp.asarray(value, x.dtype).reshape(())),)
    return (jnp.pad(x, widths, mode={"reflect": "reflect", "edge": "edge"}[mode]),)


def batch_normalization(x, scale, bias, mean, var, epsilon=1e-5, **_):
    shape = (1, -1) + (1,) * (x.ndim - 2)
    inv = scale / jnp.sqrt(var + epsilon)
    return (x * inv.reshape(shape) + (bias - mean * inv).reshape(shape),)


def quantize_linear(x, scale, zero_point=None, axis=1, saturate=1, block_size=0, output_dtype=0):
    """round_half_even(x / scale) + zero_point, saturated to the zero point's integer type; kept in float32."""
    qmin, qmax = _integer_range(zero_point)
    scale, zp = _per_axis(scale, x.ndim, axis), _per_axis(_zp(zero_point), x.ndim, axis)
    return (jnp.clip(jnp.round(x / scale) + zp, qmin, qmax),)


def dequantize_linear(q, scale, zero_point=None, axis=1, block_size=0):
    scale, zp = _per_axis(scale, q.ndim, axis), _per_axis(_zp(zero_point), q.ndim, axis)
    return ((jnp.asarray(q, jnp.float32) - zp) * scale,)


def _zp(zero_point):
    return np.zeros((), np.float32) if zero_point is None else np.asarray(zero_point).astype(np.float32)


def _integer_range(zero_point) -> tuple[int, int]:
    dtype = np.dtype(np.uint8) if zero_point is None else np.asarray(zero_point).dtype
    info = np.iinfo(np.int8 if dtype.name == "int4" else np.uint8 if dtype.name == "uint4" else dtype)
    if dtype.name in ("int4", "uint4"):
        return (-8, 7) if dtype.name == "int4" else (0, 15)
    return int(info.min), int(info.max)


def _per_axis(values, ndim: int, axis: int):
    values = jnp.asarray(values, jnp.float32)
    if values.ndim == 0 or ndim == 0:
        return values
    shape = [1] * ndim
    shape[axis % ndim] = -1
    return values.reshape(shape)


BASIC_OPS = {
    "Add": lambda a, b: (a + b,),
    "Sub": lambda a, b: (a - b,),
    "Mul": lambda a, b: (a * b,),
    "Div": lambda a, b: (a / b,),
    "Sum": lambda *xs: (sum(xs[1:], xs[0]),),
    "Relu": lambda x: (jnp.maximum(x, 0.0),),
    "Sigmoid": lambda x: (jax.nn.sigmoid(x),),
    "Tanh": lambda x: (jnp.tanh(x),),
    "Identity": lambda x: (x,),
    "Dropout": lambda x, *_, **__: (x,),
    "Gemm": gemm,
    "MatMul": matmul,
    "Clip": clip,
    "HardSigmoid": hard_sigmoid,
    "HardSwish": hard_swish,
    "LeakyRelu": leaky_relu,
    "Softmax": softmax,
    "Flatten": flatten,
    "Reshape": reshape,
    "Transpose": transpose,
    "Concat": concat,
    "Squeeze": squeeze,
    "Unsqueeze": unsqueeze,
    "Pad": pad,
    "BatchNormalization": batch_normalization,
    "QuantizeLinear": quantize_linear,
    "DequantizeLinear": dequantize_linear,
}

#: Inputs (by position) that fix shapes: they must be constants, passed as numpy arrays.
STATIC_INPUTS = {"Reshape": (1,), "Pad": (1, 3), "Squeeze": (1,), "Unsqueeze": (1,), "Resize": (1, 2, 3),
                 "QuantizeLinear": (2,), "DequantizeLinear": (2,)}
