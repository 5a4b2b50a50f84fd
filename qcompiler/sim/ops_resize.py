"""Resize (opsets 10-19) and Upsample (7, 9) in jax, one axis at a time (every mode is separable).

For each resized axis, numpy computes from the static shapes where each output position falls
in the input, which input elements it reads and with what weights (1 for nearest, 2 for linear,
4 for cubic); the data path is then gathers and a weighted sum, differentiable in x.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from qcompiler.sim.arrays import ints, is_float

NEAREST = {"round_prefer_floor": lambda c: np.ceil(c - 0.5), "round_prefer_ceil": lambda c: np.floor(c + 0.5),
           "floor": np.floor, "ceil": np.ceil}
TRANSFORMS = ("half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners", "asymmetric",
              "tf_half_pixel_for_nn", "tf_crop_and_resize")


class Method(NamedTuple):
    mode: str  # nearest, linear or cubic
    transform: str  # coordinate_transformation_mode
    nearest: str = "round_prefer_floor"  # or "simple": Resize-10 and Upsample, as onnxruntime runs them
    cubic_a: float = -0.75
    exclude_outside: bool = False
    extrapolation: float = 0.0


def _source_coordinates(out_size: int, in_size: int, scale: float, transform: str, roi) -> np.ndarray:
    """The input coordinate of each output position (coordinate_transformation_mode)."""
    o = np.arange(out_size, dtype=np.float64)
    if transform == "asymmetric":
        return o / scale
    if transform == "tf_half_pixel_for_nn":
        return (o + 0.5) / scale
    if transform == "half_pixel":
        return (o + 0.5) / scale - 0.5
    if transform == "half_pixel_symmetric":  # the half_pixel grid, centred when the size was rounded
        return in_size / 2 * (1 - out_size / (scale * in_size)) + (o + 0.5) / scale - 0.5
    if out_size == 1:
        centre = 0.5 * (roi[0] + roi[1]) * (in_size - 1) if transform == "tf_crop_and_resize" else 0.0
        return np.full(1, centre)
    if transform == "pytorch_half_pixel":
        return (o + 0.5) / scale - 0.5
    if transform == "align_corners":
        return o * (in_size - 1) / (out_size - 1)
    if transform == "tf_crop_and_resize":
        return roi[0] * (in_size - 1) + o * (roi[1] - roi[0]) * (in_size - 1) / (out_size - 1)
    raise ValueError(f"coordinate_transformation_mode {transform!r}")


def _cubic_weights(ratio: np.ndarray, a: float) -> np.ndarray:
    """Keys' cubic kernel at the distances from the 4 taps floor(c) - 1 .. floor(c) + 2."""

    def kernel(d):
        return np.where(d <= 1, ((a + 2) * d - (a + 3)) * d * d + 1, ((a * d - 5 * a) * d + 8 * a) * d - 4 * a)

    return np.stack([kernel(1 + ratio), kernel(ratio), kernel(1 - ratio), kernel(2 - ratio)], axis=1)


def _taps(coords: np.ndarray, in_size: int, scale: float, method: Method) -> tuple[np.ndarray, np.ndarray]:
    """(input indices, weights), each [output positions, taps]; indices past the edges read the
    edge (or, with exclude_outside, get no weight)."""
    if method.mode == "nearest":
        if method.nearest == "simple":  # onnxruntime's rule before nearest_mode existed
            index = np.ceil(coords) if scale < 1 else np.floor(coords)
        else:
            index = NEAREST[method.nearest](coords)
        return np.clip(index, 0, in_size - 1).astype(np.int64)[:, None], np.ones((len(coords), 1))
    base = np.floor(coords)
    ratio = coords - base
    if method.mode == "linear":
        index, weights = base[:, None] + np.arange(2), np.stack([1 - ratio, ratio], axis=1)
    else:
        index, weights = base[:, None] + np.arange(-1, 3), _cubic_weights(ratio, method.cubic_a)
    if method.exclude_outside:
        weights = np.where((index < 0) | (index > in_size - 1), 0.0, weights)
        weights = weights / weights.sum(axis=1, keepdims=True)
    return np.clip(index, 0, in_size - 1).astype(np.int64), weights


def _resize_axes(x, axes, factors, sizes, method: Method, rois=None):
    """x resized along each of `axes` to `sizes`, at scales `factors`; rois: (start, end) per axis."""
    dtype = x.dtype
    for j, (axis, scale, out) in enumerate(zip(axes, factors, sizes)):
        size = x.shape[axis]
        if out == size and scale == 1.0 and method.transform != "tf_crop_and_resize":
            continue
        roi = rois[j] if rois is not None else None
        coords = _source_coordinates(out, size, scale, method.transform, roi)
        index, weights = _taps(coords, size, scale, method)
        shape = [-1 if a == axis else 1 for a in range(x.ndim)]
        # One gather of every tap, then the weighted sum over the taps' axis (axis + 1): cheaper
        # to compile than a gather per tap. The indices are in range, so "clip" never clips.
        x = jnp.take(x, index.reshape(-1), axis=axis, mode="clip")
        if weights.shape[1] > 1:
            taps = x.reshape(x.shape[:axis] + weights.shape + x.shape[axis + 1:])
            x = jnp.sum(taps * weights.astype(np.float32).reshape(shape[:axis + 1] + [weights.shape[1]] +
                                                                  shape[axis + 1:]), axis=axis + 1)
        if method.transform == "tf_crop_and_resize":  # outside the input: extrapolation_value
            outside = ((coords < 0) | (coords > size - 1)).reshape(shape)
            x = jnp.where(outside, jnp.asarray(method.extrapolation, x.dtype), x)
    return x if is_float(dtype) or x.dtype == dtype else jnp.round(x).astype(dtype)


def _geometry(shape, axes, scales, sizes, policy: str) -> tuple[list[float], list[int]]:
    """(scale, output size) per resized axis, from `sizes` (with keep_aspect_ratio_policy) or `scales`."""
    if sizes is not None and np.size(sizes):
        sizes = ints(sizes)
        factors = [s / shape[a] for s, a in zip(sizes, axes)]
        if policy == "stretch":
            return factors, sizes
        common = min(factors) if policy == "not_larger" else max(factors)
        return [common] * len(axes), [int(common * shape[a] + 0.5) for a in axes]
    factors = [float(s) for s in np.asarray(scales).reshape(-1)]
    return factors, [math.floor(shape[a] * f) for a, f in zip(axes, factors)]


def resize(x, roi=None, scales=None, sizes=None, opset=19, mode="nearest",
           coordinate_transformation_mode="half_pixel", nearest_mode="round_prefer_floor", cubic_coeff_a=-0.75,
           exclude_outside=0, extrapolation_value=0.0, antialias=0, axes=None, keep_aspect_ratio_policy="stretch"):
    """Resize; opset 10 takes (X, scales) and maps coordinates asymmetrically."""
    transform, nearest = coordinate_transformation_mode, nearest_mode
    if opset < 11:
        roi, scales, transform, nearest = None, roi, "asymmetric", "simple"
    axes = list(range(x.ndim)) if axes is None else [a % x.ndim for a in axes]
    factors, out = _geometry(x.shape, axes, scales, sizes, keep_aspect_ratio_policy)
    rois = None
    if transform == "tf_crop_and_resize":
        flat = np.asarray(roi, np.float64).reshape(-1)
        rois = list(zip(flat[:len(axes)], flat[len(axes):]))
    method = Method(mode, transform, nearest, cubic_coeff_a, bool(exclude_outside), extrapolation_value)
    return (_resize_axes(x, axes, factors, out, method, rois),)


def upsample(x, scales=None, mode="nearest"):
    """Upsample (opset 7: scales attribute; 9: input), as Resize-10: asymmetric coordinates."""
    factors = [float(s) for s in np.asarray(scales).reshape(-1)]
    sizes = [math.floor(d * f) for d, f in zip(x.shape, factors)]
    method = Method("nearest" if mode == "nearest" else "linear", "asymmetric", "simple")
    return (_resize_axes(x, range(x.ndim), factors, sizes, method),)


def _resize_check(attrs: dict, inputs: list) -> str | None:
    if attrs.get("mode", "nearest") not in ("nearest", "linear", "cubic"):
        return f"mode {attrs['mode']}"
    if attrs.get("coordinate_transformation_mode", "half_pixel") not in TRANSFORMS:
        return f"coordinate_transformation_mode {attrs['coordinate_transformation_mode']}"
    if attrs.get("nearest_mode", "round_prefer_floor") not in NEAREST:
        return f"nearest_mode {attrs['nearest_mode']}"
    return "antialias=1 (not implemented)" if attrs.get("antialias", 0) else None


def _upsample_check(attrs: dict, inputs: list) -> str | None:
    mode = attrs.get("mode", "nearest")
    return None if mode in ("nearest", "linear", "bilinear") else f"mode {mode}"


RESIZE_OPS = {"Resize": resize, "Upsample": upsample}
RESIZE_STATIC_INPUTS = {"Resize": (1, 2, 3), "Upsample": (1,)}
RESIZE_CHECKS = {"Resize": _resize_check, "Upsample": _upsample_check}
