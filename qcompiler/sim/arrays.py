"""numpy or jax.numpy: how the simulator's ops keep shape-valued tensors static.

jax needs static shapes, so the inputs that fix one (Reshape's shape, Slice's starts, Resize's
sizes, ...) must be known while tracing. Those values stay numpy arrays: constants, the shapes
of traced tensors (Shape, Size) and whatever ops compute from such values alone. An op whose
inputs are all numpy computes with numpy (exact int64 arithmetic, nothing traced); as soon as
one input is a jax array it computes with jax.numpy (jit-compiled, differentiable).

Dtypes: floats are float32 throughout (a model's double or float16 constants are read as
float32); integer and bool tensors keep their type, except that jax, without its 64-bit mode,
holds 64-bit integers as 32-bit ones (static values stay int64).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import onnx


def is_static(value) -> bool:
    """True for a numpy value (known while tracing) and for None (an omitted input)."""
    return value is None or isinstance(value, (np.ndarray, np.generic))


def xp(*values):
    """numpy if every value is static, else jax.numpy."""
    return np if all(is_static(v) for v in values) else jnp


def is_float(dtype) -> bool:
    return bool(jnp.issubdtype(dtype, jnp.floating))


def as_float32(value: np.ndarray) -> np.ndarray:
    """A constant as the simulator holds it: any float type as float32, other types as they are."""
    value = np.asarray(value)
    return value.astype(np.float32) if is_float(value.dtype) and value.dtype != np.float32 else value


def astype(x, dtype):
    """x as `dtype`; a jax array gets the nearest type jax has (int64 -> int32) without a warning."""
    return x.astype(dtype if is_static(x) else jax.dtypes.canonicalize_dtype(dtype))


def cast(x, dtype):
    """ONNX Cast to a numpy dtype, floats kept float32: a cast to float16 or bfloat16 rounds to
    that type and back (the values a model computes with), a cast to double changes nothing."""
    dtype = np.dtype(dtype)
    if not is_float(dtype):
        return astype(x, dtype)
    if dtype.itemsize < 4:
        x = x.astype(dtype)
    return x.astype(np.float32)


def onnx_dtype(elem_type: int) -> np.dtype:
    """The numpy dtype of an ONNX element type (bfloat16 as ml_dtypes', whatever the onnx version)."""
    if elem_type == onnx.TensorProto.BFLOAT16:
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type))


def ints(values) -> list[int]:
    """A static 0-d or 1-d integer value (or attribute list) as Python ints."""
    return [int(v) for v in np.asarray(values).reshape(-1)]


def axes_of(axes_input, axes_attr) -> list[int] | None:
    """Axes given as an input (newer opsets) or as an attribute (older); None when neither."""
    axes = axes_input if axes_input is not None else axes_attr
    return None if axes is None else ints(axes)


def text(value, default: str = "") -> str:
    """A string attribute (graphsurgeon gives str; bytes are accepted too)."""
    if value is None:
        return default
    return value.decode() if isinstance(value, bytes) else value
