"""Activations whose typical values would not survive 8 bits, measured on calibration data.

A per-tensor scale must span the tensor's range. When a few values set that range far beyond
where the rest lie (a detector's anchor offsets added to small regressions, a tflite-converted
activation spanning -430..11 whose values are mostly within a few units), the bulk of the
tensor lands on a handful of grid steps and its signal is gone, although the tensor's overall
SQNR, dominated by the large values' energy, looks fine. So the measure here is the SQNR of the
bulk: over the elements of each sample between its BULK_QUANTILE and 1 - BULK_QUANTILE quantiles,
the float values against their fake-quantized ones at the calibrated parameters.

Below MIN_BULK_SQNR_DB (about 2 effective bits; a well-spread 8-bit tensor keeps 35-45 dB) the
tensor has lost its signal. The remedy (passes/widen_activations.py) is 16-bit activations for
it; a higher threshold (QuantConfig.widen_below_db) widens degraded tensors too, at a cost in
speed where the layers reading them lose their 8-bit kernels.
"""

from __future__ import annotations

import numpy as np

from qcompiler.quant.maths import fake_quantize
from qcompiler.quant.spec import QuantParams, QuantSpec

MIN_BULK_SQNR_DB = 12.0
BULK_QUANTILE = 0.01


def bulk_energies(values: np.ndarray, params: QuantParams, spec: QuantSpec) -> tuple[float, float]:
    """(signal, noise) energy of the bulk of each sample of `values` (the first axis is the batch).

    >>> from qcompiler.quant.maths import params_from_range
    >>> spec = QuantSpec(8, signed=False, symmetric=False)
    >>> x = np.random.default_rng(0).normal(0, 1, (2, 1000)).astype(np.float32)
    >>> signal, noise = bulk_energies(x, params_from_range(-4.0, 4.0, spec), spec)
    >>> bool(10 * np.log10(signal / noise) > 35)
    True
    >>> x[:, 0] = -430.0                          # one value a sample sets the range
    >>> signal, noise = bulk_energies(x, params_from_range(-430.0, 4.0, spec), spec)
    >>> bool(10 * np.log10(signal / noise) < 20)
    True
    """
    flat = values.reshape(len(values), -1).astype(np.float64)
    lo, hi = np.quantile(flat, [BULK_QUANTILE, 1 - BULK_QUANTILE], axis=1, keepdims=True)
    bulk = (flat >= lo) & (flat <= hi)
    error = flat - fake_quantize(flat.astype(np.float32), params, spec).astype(np.float64)
    return float(np.sum(np.square(flat) * bulk)), float(np.sum(np.square(error) * bulk))


def sqnr_from(signal: float, noise: float) -> float:
    """10 log10(signal / noise) in dB; inf without noise."""
    return float("inf") if noise == 0.0 else 10.0 * float(np.log10(max(signal, 1e-300) / noise))
