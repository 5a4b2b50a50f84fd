"""Quantization: specs, maths, observers and presets (numpy only)."""

from qcompiler.quant.maths import dequantize, fake_quantize, params_from_range, quantize, sqnr_db
from qcompiler.quant.spec import QuantParams, QuantSpec

__all__ = ["QuantParams", "QuantSpec", "dequantize", "fake_quantize", "params_from_range", "quantize", "sqnr_db"]
