"""Shape, layout and indexing ops with ONNX semantics, in numpy or jax.numpy (qcompiler.sim.arrays).

Every op here computes with numpy when its inputs are numpy, so that shape computations
(Shape -> Gather -> Concat -> Reshape, ...) stay static under jit. The inputs listed in
SHAPE_STATIC_INPUTS fix output shapes and are always numpy.
"""

from __future__ import annotations

import math

import numpy as np
import onnx

from qcompiler.sim.arrays import as_float32, astype, axes_of, cast, ints, onnx_dtype, text, xp


def shape(x, start=0, end=None):
    """Shape (opset 15: start/end; Python's slice clamps them as ONNX says)."""
    return (np.array(x.shape, np.int64)[start:end],)


def size(x):
    return (np.array(math.prod(x.shape), np.int64),)


def flatten(x, axis=1):
    axis = axis % x.ndim if x.ndim else 0
    return (x.reshape((math.prod(x.shape[:axis]), -1)),)


def reshape(x, shape, allowzero=0):
    target = ints(shape)
    if not allowzero:
        target = [x.shape[i] if s == 0 else s for i, s in enumerate(target)]
    return (x.reshape(target),)


def transpose(x, perm=None):
    return (x.transpose(perm),)


def concat(*xs, axis):
    return (xp(*xs).concatenate(xs, axis=axis),)


def squeeze(x, axes=None):
    """Squeeze (opset 13: axes input; older: attribute); no axes: every axis of size 1."""
    axes = axes_of(axes, None)
    return (x.squeeze() if axes is None else x.squeeze(tuple(a % x.ndim for a in axes)),)


def unsqueeze(x, axes=None):
    axes = axes_of(axes, None)
    rank = x.ndim + len(axes)
    dims = list(x.shape)
    for a in sorted(a % rank for a in axes):
        dims.insert(a, 1)
    return (x.reshape(dims),)


def gather(data, indices, axis=0):
    m = xp(data, indices)
    axis = axis % data.ndim
    indices = m.where(indices < 0, indices + data.shape[axis], indices)
    return (m.take(data, indices, axis=axis, mode="clip"),)  # in range (ONNX): no NaN-filling code


def slice_(x, starts=None, ends=None, axes=None, steps=None, **attrs):
    """Slice: starts/ends/axes/steps as inputs (opset >= 10) or attributes (older). Python's
    slice normalizes negative and out-of-range bounds exactly as ONNX does, for either sign of
    step; slice.indices gives -1 as the end of a backward slice through index 0, which as an
    index would mean the last element, hence the None."""
    starts = ints(starts if starts is not None else attrs["starts"])
    ends = ints(ends if ends is not None else attrs["ends"])
    axes = axes_of(axes, attrs.get("axes")) or list(range(len(starts)))
    steps = ints(steps) if steps is not None else [1] * len(starts)
    index = [slice(None)] * x.ndim
    for start, end, axis, step in zip(starts, ends, axes, steps):
        start, end, step = slice(start, end, step).indices(x.shape[axis % x.ndim])
        index[axis % x.ndim] = slice(start, None if end < 0 else end, step)
    return (x[tuple(index)],)


def split(x, sizes=None, axis=0, num_outputs=None, outputs=1, split=None):
    """Split: sizes as an input (opset >= 13) or the `split` attribute (older); else equal parts,
    `num_outputs` of them (opset 18, the last one smaller if need be) or one per node output."""
    dim = x.shape[axis]
    if sizes is None and split is None:
        count = num_outputs or outputs
        part = -(-dim // count)
        sizes = [part] * (count - 1) + [dim - part * (count - 1)]
    points = np.cumsum(ints(sizes if sizes is not None else split))[:-1]
    return tuple(xp(x).split(x, points, axis=axis))


def expand(x, shape):
    """Expand broadcasts both ways: a 1 in `shape` keeps x's dimension."""
    return (xp(x).broadcast_to(x, np.broadcast_shapes(x.shape, tuple(ints(shape)))),)


def tile(x, repeats):
    return (xp(x).tile(x, ints(repeats)),)


def cast_op(x, to, saturate=1):
    return (cast(x, onnx_dtype(to)),)


def cast_like(x, like, saturate=1, like_dtype=None):
    return (cast(x, like.dtype if like_dtype is None else like_dtype),)


def range_(start, limit, delta):
    """Range: start + i * delta for i < max(ceil((limit - start) / delta), 0), in the inputs' type."""
    start, limit, delta = (np.asarray(v).reshape(()) for v in (start, limit, delta))
    count = max(math.ceil((limit.item() - start.item()) / delta.item()), 0)
    return (as_float32(start + np.arange(count, dtype=start.dtype) * delta),)


def constant_of_shape(shape, value=None):
    value = np.zeros((), np.float32) if value is None else np.asarray(value.values).reshape(())
    return (as_float32(np.full(tuple(ints(shape)), value, value.dtype)),)


def depth_to_space(x, blocksize, mode="DCR"):
    n, c, h, w = x.shape
    b = blocksize
    if text(mode) == "DCR":
        x = x.reshape((n, b, b, c // (b * b), h, w)).transpose((0, 3, 4, 1, 5, 2))
    else:  # CRD
        x = x.reshape((n, c // (b * b), b, b, h, w)).transpose((0, 1, 4, 2, 5, 3))
    return (x.reshape((n, c // (b * b), h * b, w * b)),)


def space_to_depth(x, blocksize):
    n, c, h, w = x.shape
    b = blocksize
    x = x.reshape((n, c, h // b, b, w // b, b)).transpose((0, 3, 5, 1, 2, 4))
    return (x.reshape((n, c * b * b, h // b, w // b)),)


def identity(x):
    return (x,)


def dropout(x, ratio=None, training_mode=None, seed=None):
    """Dropout at inference: the input, and a mask of ones (a constant training_mode=1 is refused)."""
    return x, xp(x).ones(x.shape, bool)


def _dropout_check(attrs: dict, inputs: list) -> str | None:
    training = inputs[2] if len(inputs) > 2 else None
    return "training_mode=1 (the simulator runs inference)" if training is not None and bool(training) else None


#: Cast targets with a simulator dtype (not string, complex, float8 or 4-bit types).
CAST_TYPES = frozenset(onnx.TensorProto.DataType.Value(n) for n in (
    "FLOAT", "UINT8", "INT8", "UINT16", "INT16", "INT32", "INT64", "BOOL", "FLOAT16", "DOUBLE", "UINT32", "UINT64",
    "BFLOAT16"))


def _cast_check(attrs: dict, inputs: list) -> str | None:
    to = attrs.get("to")
    return None if to in CAST_TYPES else f"to {onnx.TensorProto.DataType.Name(to)} (no such dtype in the simulator)"


SHAPE_OPS = {
    "Shape": shape,
    "Size": size,
    "Flatten": flatten,
    "Reshape": reshape,
    "Transpose": transpose,
    "Concat": concat,
    "Squeeze": squeeze,
    "Unsqueeze": unsqueeze,
    "Gather": gather,
    "Slice": slice_,
    "Split": split,
    "Expand": expand,
    "Tile": tile,
    "Cast": cast_op,
    "CastLike": cast_like,
    "Range": range_,
    "ConstantOfShape": constant_of_shape,
    "DepthToSpace": depth_to_space,
    "SpaceToDepth": space_to_depth,
    "Identity": identity,
    "Dropout": dropout,
}

#: Inputs (by position) that fix shapes: they must be known while tracing, and arrive as numpy.
SHAPE_STATIC_INPUTS = {"Reshape": (1,), "Squeeze": (1,), "Unsqueeze": (1,), "Slice": (1, 2, 3, 4), "Split": (1,),
                       "Expand": (1,), "Tile": (1,), "Range": (0, 1, 2), "ConstantOfShape": (0,), "Dropout": (2,)}

SHAPE_CHECKS = {"Cast": _cast_check, "Dropout": _dropout_check}
