"""Linear algebra, activations, padding and quantization in jax, with ONNX semantics.

Inputs that fix a shape (Pad's pads, ...) must be known while tracing: the interpreter passes
them as numpy arrays (qcompiler.sim.arrays), so shapes stay static under jit.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from qcompiler.sim.arrays import axes_of


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


def _softmax_like(fn, x, axis, opset: int):
    """Opset 13 normalizes along `axis` (default -1); older opsets over the flattened trailing
    axes from `axis` (default 1) on."""
    if opset >= 13:
        return fn(x, axis=-1 if axis is None else axis)
    axis = 1 if axis is None else axis % x.ndim
    flat = x.reshape((int(np.prod(x.shape[:axis])), -1))
    return fn(flat, axis=1).reshape(x.shape)


def softmax(x, axis=None, opset=13):
    return (_softmax_like(jax.nn.softmax, x, axis, opset),)


def log_softmax(x, axis=None, opset=13):
    return (_softmax_like(jax.nn.log_softmax, x, axis, opset),)


def elu(x, alpha=1.0):
    return (jax.nn.elu(x, alpha),)  # exp of min(x, 0): no inf in the unused branch's gradient


def selu(x, alpha=1.67326319217681884765625, gamma=1.05070102214813232421875):
    return (gamma * jax.nn.elu(x, alpha),)


def gelu(x, approximate="none"):
    return (jax.nn.gelu(x, approximate=approximate == "tanh"),)


def swish(x, alpha=1.0):
    return (x * jax.nn.sigmoid(alpha * x),)


def mish(x):
    return (x * jnp.tanh(jax.nn.softplus(x)),)


def pad(x, pads=None, constant_value=None, axes=None, mode="constant", **attrs):
    """Pad (opset >= 11: pads as an input; opset 2: as an attribute), constant/reflect/edge."""
    flat = [int(p) for p in np.asarray(pads if pads is not None else attrs["pads"]).reshape(-1)]
    mode = mode.decode() if isinstance(mode, bytes) else mode
    axes = axes_of(axes, None) or list(range(x.ndim))
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
    "Relu": lambda x: (jnp.maximum(x, 0.0),),
    "Sigmoid": lambda x: (jax.nn.sigmoid(x),),
    "Tanh": lambda x: (jnp.tanh(x),),
    "Softplus": lambda x: (jax.nn.softplus(x),),
    "Elu": elu,
    "Selu": selu,
    "Gelu": gelu,
    "Swish": swish,
    "Mish": mish,
    "PRelu": lambda x, slope: leaky_relu(x, slope),
    "Gemm": gemm,
    "MatMul": matmul,
    "Clip": clip,
    "HardSigmoid": hard_sigmoid,
    "HardSwish": hard_swish,
    "LeakyRelu": leaky_relu,
    "Softmax": softmax,
    "LogSoftmax": log_softmax,
    "Pad": pad,
    "BatchNormalization": batch_normalization,
    "QuantizeLinear": quantize_linear,
    "DequantizeLinear": dequantize_linear,
}

#: Inputs (by position) that fix shapes or integer types: they arrive as numpy arrays.
BASIC_STATIC_INPUTS = {"Pad": (1, 3), "QuantizeLinear": (2,), "DequantizeLinear": (2,)}


def _pad_check(attrs: dict, inputs: list) -> str | None:
    mode = attrs.get("mode", "constant")
    return None if mode in ("constant", "reflect", "edge") else f"mode {mode}"


BASIC_CHECKS = {"Pad": _pad_check}
