"""Layout and schedule templates for the integer module (the default build; no search).

1. `to_nhwc`: Relax's ConvertLayout puts every convolution (and, through layout inference,
   the requantization, residual adds and pooling around it) in NHWC, so that input channels
   are contiguous; constant weights are re-laid out by constant folding.
2. `use_vnni_kernels`: every u8 x s8 -> s32 conv2d (groups 1) and matmul with a constant
   weight becomes a call of the scheduled VNNI kernel (schedules/x86_vnni.py). Input channels
   are zero-padded to a multiple of 4 and output channels to a multiple of 16 (zero weights,
   then a slice), so every such layer qualifies. Depthwise convolutions and the elementwise
   requantization stay on TVM's generic code for now.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import tvm
from tvm import relax

from qcompiler.backends.tvm.schedules import x86_vnni


def to_nhwc(mod: tvm.IRModule) -> tvm.IRModule:
    mod = relax.transform.CanonicalizeBindings()(mod)   # aliases would stop layout propagation
    mod = relax.transform.ConvertLayout({"relax.nn.conv2d": ["NHWC", "OHWI"]})(mod)
    return relax.transform.FoldConstant()(mod)


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


@relax.expr_functor.mutator
class _VnniKernels(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule):
        super().__init__(mod)
        self.used: Counter = Counter()

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        name = call.op.name if isinstance(call.op, tvm.ir.Op) else ""
        if name == "relax.nn.conv2d":
            lowered = self._conv2d(call)
        elif name == "relax.matmul":
            lowered = self._matmul(call)
        else:
            lowered = None
        return lowered if lowered is not None else super().visit_call_(call)

    def _qualifies(self, call: relax.Call) -> np.ndarray | None:
        data, weight = call.args
        if not isinstance(weight, tvm.ir.expr.Constant) or str(call.ty.dtype) != "int32":
            return None
        if str(data.ty.dtype) != "uint8" or str(weight.ty.dtype) != "int8":
            return None
        return weight.value.numpy()

    def _conv2d(self, call: relax.Call):
        attrs = call.attrs
        weight = self._qualifies(call)
        if (weight is None or attrs.data_layout != "NHWC" or attrs.kernel_layout != "OHWI"
                or attrs.out_layout != "NHWC"):
            return None
        if int(attrs.groups) != 1:
            return self._grouped_hwio(call, weight)
        return self._emit(self.visit_expr(call.args[0]), weight, tuple(int(s) for s in attrs.strides),
                          tuple(int(d) for d in attrs.dilation), tuple(int(p) for p in attrs.padding))

    def _grouped_hwio(self, call: relax.Call, weight: np.ndarray) -> relax.Expr:
        """Grouped (depthwise) convolutions keep TVM's compute but take HWIO weights, so that
        the vectorized channel loop reads weights contiguously (OHWI strides them by KH*KW)."""
        attrs = call.attrs
        self.used["depthwise/grouped conv2d, HWIO weights"] += 1
        return self.builder_.emit(relax.op.nn.conv2d(
            self.visit_expr(call.args[0]), relax.const(np.ascontiguousarray(weight.transpose(1, 2, 3, 0)), "int8"),
            strides=attrs.strides, padding=attrs.padding, dilation=attrs.dilation, groups=int(attrs.groups),
            data_layout="NHWC", kernel_layout="HWIO", out_dtype="int32"))

    def _matmul(self, call: relax.Call):
        weight = self._qualifies(call)
        data = call.args[0]
        if weight is None or weight.ndim != 2 or len(data.ty.shape) != 2:
            return None
        rows, depth = (int(d) for d in data.ty.shape)
        image = self.builder_.emit(relax.op.reshape(self.visit_expr(data), [1, 1, rows, depth]))
        out = self._emit(image, weight.T.reshape(weight.shape[1], 1, 1, depth), (1, 1), (1, 1), (0, 0, 0, 0))
        return self.builder_.emit(relax.op.reshape(out, [rows, weight.shape[1]]))

    def _emit(self, data: relax.Expr, weight: np.ndarray, stride, dilation, padding) -> relax.Expr:
        n, h, w, ci = (int(d) for d in data.ty.shape)
        co, kh, kw, _ = weight.shape
        ci4, co16 = _round_up(ci, 4), _round_up(co, 16)
        if ci4 != ci:   # extra zero channels meet zero weights
            data = self.builder_.emit(relax.op.nn.pad(data, [0, 0, 0, 0, 0, 0, 0, ci4 - ci], pad_value=0.0))
        padded = np.zeros((co16, kh, kw, ci4), np.int8)
        padded[:co, :, :, :ci] = weight
        kernel = x86_vnni.conv2d_kernel(n, h, w, ci4, co16, kh, kw, stride, dilation, padding)
        gvar = self.builder_.add_func(kernel, kernel.attrs["global_symbol"])
        ho = (h + padding[0] + padding[2] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
        wo = (w + padding[1] + padding[3] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
        out = self.builder_.emit(relax.op.call_tir(
            gvar, relax.Tuple([data, relax.const(x86_vnni.pack_weight(padded), "int8")]),
            relax.TensorType([n, ho, wo, co16], "int32")))
        self.used["vnni conv2d" if kh * kw > 1 else "vnni 1x1 conv2d / matmul"] += 1
        if co16 != co:
            out = self.builder_.emit(relax.op.strided_slice(out, axes=[3], begin=[0], end=[co]))
        return out


def use_vnni_kernels(mod: tvm.IRModule) -> tuple[tvm.IRModule, Counter]:
    mutator = _VnniKernels(mod)
    main = mutator.visit_expr(mod["main"])
    mod = mutator.builder_.get()
    mod["main"] = main
    return relax.transform.DeadCodeElimination()(mod), mutator.used
