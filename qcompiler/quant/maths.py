"""Quantizer maths in numpy: ranges to scale and zero point, quantize, dequantize, fake-quant.

Rounding is half to even, as numpy's `rint` and the ONNX reference QuantizeLinear do.

>>> spec = QuantSpec(bits=8, signed=False)
>>> p = params_from_range(np.float32(-1.0), np.float32(3.0), spec)
>>> float(p.scale), int(p.zero_point)
(0.01568627543747425, 64)
>>> quantize(np.array([0.0, 3.0, 100.0], np.float32), p, spec).tolist()
[64, 255, 255]
"""

from __future__ import annotations

import logging

import numpy as np

from qcompiler.quant.spec import QuantParams, QuantSpec

log = logging.getLogger(__name__)

# Smallest scale we emit: below it float32 loses the relative precision that (x / scale) needs.
MIN_SCALE = float(np.finfo(np.float32).tiny) * 2**23
#: Biases are int32 (at scale s_x * s_w), symmetric: [-INT32_LIMIT, INT32_LIMIT].
INT32_LIMIT = 2**31 - 1


def params_from_range(lo, hi, spec: QuantSpec, *, warn: bool = True) -> QuantParams:
    """Scale and zero point that map [lo, hi] (extended to contain 0) onto the spec's grid.

    A zero-width range (an all-zero tensor or channel) has no natural scale; it gets scale 1.0,
    which represents its only value, 0, exactly (a warning says so, unless `warn` is False:
    callers that see many such tensors say it once).
    """
    lo = np.minimum(np.asarray(lo, np.float64), 0.0)
    hi = np.maximum(np.asarray(hi, np.float64), 0.0)
    if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
        raise ValueError("range bounds must be finite")
    if spec.symmetric:
        bound = np.maximum(-lo, hi) if spec.signed else hi
        positive_levels = spec.qmax
        scale = bound / positive_levels
        zero_point = np.zeros_like(scale)
    else:
        scale = (hi - lo) / (spec.qmax - spec.qmin)
        safe = np.where(scale > 0, scale, 1.0)
        zero_point = np.clip(np.rint(spec.qmin - lo / safe), spec.qmin, spec.qmax)
    degenerate = scale <= 0
    if np.any(degenerate):
        (log.warning if warn else log.debug)("zero-width range (%d of %d channels): scale 1.0 represents their value 0 exactly",
                    int(np.sum(degenerate)), degenerate.size)
        scale = np.where(degenerate, 1.0, scale)
    scale = np.maximum(scale, MIN_SCALE).astype(np.float32)
    return QuantParams(scale=scale, zero_point=zero_point.astype(np.int32))


def _broadcast(values: np.ndarray, ndim: int, axis: int | None) -> np.ndarray:
    """Reshape per-channel values to broadcast along `axis` of an ndim-dimensional tensor."""
    if axis is None or values.ndim == 0:
        return values
    shape = [1] * ndim
    shape[axis] = -1
    return values.reshape(shape)


def quantize(x: np.ndarray, params: QuantParams, spec: QuantSpec) -> np.ndarray:
    """round_half_even(x / scale) + zero_point, clipped to [qmin, qmax], as int32."""
    scale = _broadcast(params.scale, x.ndim, spec.axis)
    zero_point = _broadcast(params.zero_point, x.ndim, spec.axis)
    q = np.rint(x.astype(np.float32) / scale) + zero_point
    return np.clip(q, spec.qmin, spec.qmax).astype(np.int32)


def dequantize(q: np.ndarray, params: QuantParams, spec: QuantSpec) -> np.ndarray:
    """(q - zero_point) * scale, as float32."""
    scale = _broadcast(params.scale, q.ndim, spec.axis)
    zero_point = _broadcast(params.zero_point, q.ndim, spec.axis)
    return ((q.astype(np.int32) - zero_point).astype(np.float32) * scale).astype(np.float32)


def fake_quantize(x: np.ndarray, params: QuantParams, spec: QuantSpec) -> np.ndarray:
    """dequantize(quantize(x)): the value the quantized model computes with."""
    return dequantize(quantize(x, params, spec), params, spec)


def sqnr_db(reference: np.ndarray, approximation: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio in dB: 10 log10(sum x^2 / sum (x - x')^2)."""
    signal = float(np.sum(np.square(reference, dtype=np.float64)))
    noise = float(np.sum(np.square(reference.astype(np.float64) - approximation)))
    if noise == 0.0:
        return float("inf")
    return 10.0 * np.log10(max(signal, 1e-300) / noise)
