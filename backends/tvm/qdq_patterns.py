"""Reading the QDQ structure of an imported Relax function: constants, quantized tensors, weights.

The Relax ONNX frontend turns QuantizeLinear/DequantizeLinear into `R.quantize`/`R.dequantize`
and keeps the float op between them. These helpers look through the bindings of the original
function to recognise, for an expression, "the integer tensor q on grid (scale, zero point)"
or "the constant integer weight w with per-channel scales".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax

QUANTIZE = tvm.ir.Op.get("relax.quantize")
DEQUANTIZE = tvm.ir.Op.get("relax.dequantize")
INTEGER_DTYPES = ("uint8", "int8", "uint16", "int16")


@dataclass(frozen=True)
class QTensor:
    """A computed integer tensor and the per-tensor grid that the QDQ model gives it."""

    var: relax.Expr
    scale: float
    zero_point: int
    dtype: str


@dataclass(frozen=True)
class QWeight:
    """A constant integer weight (zero point already subtracted), with scales along `axis`."""

    values: np.ndarray
    scale: np.ndarray
    axis: int


def op_name(value) -> str:
    """The op a Relax call calls ("relax.add", ...); "" for anything else (a var, a constant, a
    call of a function)."""
    return value.op.name if isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op) else ""


class Bindings:
    """Original var -> bound value of one Relax function, and the constant evaluation of both."""

    def __init__(self, func: relax.Function):
        self.values: dict = {}
        for block in func.body.blocks:
            for binding in block.bindings:
                if isinstance(binding, relax.VarBinding):
                    self.values[binding.var] = binding.value

    def value(self, expr):
        """The call an expression stands for (following vars to their bindings)."""
        while isinstance(expr, relax.Var) and expr in self.values:
            expr = self.values[expr]
        return expr

    def call(self, expr, name: str):
        """The expression as a call of the named op, else None."""
        value = self.value(expr)
        return value if op_name(value) == name else None

    def constant(self, expr) -> np.ndarray | None:
        """The numpy value of a constant expression, looking through the frontend's NaN guard
        `where(isnan(k), inf, k)` around Clip bounds; None if it is not a constant."""
        value = self.value(expr)
        if isinstance(value, tvm.ir.expr.Constant):
            return value.value.numpy()
        where = self.call(value, "relax.where")
        if where is not None and self.call(where.args[0], "relax.isnan") is not None:
            inner = self.constant(where.args[2])
            if inner is not None and not np.any(np.isnan(inner)):
                return inner
        return None

    def qtensor(self, expr) -> QTensor | None:
        """`dequantize(q, s, zp)` of a computed integer tensor with a per-tensor grid."""
        call = self.call(expr, "relax.dequantize")
        if call is None:
            return None
        data, scale, zero_point = call.args
        scale, zero_point = self.constant(scale), self.constant(zero_point)
        dtype = str(data.ty.dtype) if hasattr(data.ty, "dtype") else ""
        if (scale is None or zero_point is None or scale.size != 1 or zero_point.size != 1
                or self.constant(data) is not None or dtype not in INTEGER_DTYPES):
            return None
        return QTensor(data, float(scale.reshape(())), int(zero_point.reshape(())), dtype)

    def qweight(self, expr) -> QWeight | None:
        """`dequantize(constant integer, scales, zero points)`: a constant weight, with any zero
        point folded into the values (w - zp must still fit int8: it does for 2-4 bit grids)."""
        call = self.call(expr, "relax.dequantize")
        if call is None:
            return None
        values, scale, zero_point = (self.constant(a) for a in call.args)
        if values is None or scale is None or zero_point is None or values.dtype not in (np.int8, np.uint8):
            return None
        axis = int(call.attrs.axis) % max(values.ndim, 1)
        zero_point = zero_point.astype(np.int32).reshape(-1)
        if zero_point.size > 1:
            zero_point = zero_point.reshape([-1 if a == axis else 1 for a in range(values.ndim)])
        centred = values.astype(np.int32) - zero_point
        if centred.min() < -128 or centred.max() > 127:
            return None
        return QWeight(centred, scale.astype(np.float64).reshape(-1), axis)

    def float_bias(self, expr, channels: int) -> np.ndarray | None:
        """A bias added after a conv or matmul: a (dequantized) constant of one value per
        output channel, possibly reshaped to broadcast; its float values, else None."""
        reshape = self.call(expr, "relax.reshape")
        if reshape is not None:
            expr = reshape.args[0]
        constant = self.constant(expr)
        if constant is not None:
            values = constant.astype(np.float64)
        else:
            call = self.call(expr, "relax.dequantize")
            if call is None:
                return None
            q, scale, zero_point = (self.constant(a) for a in call.args)
            if q is None or scale is None or zero_point is None:
                return None
            values = (q.astype(np.float64) - zero_point) * scale.astype(np.float64)
        values = values.reshape(-1)
        return values if values.size == channels else None
