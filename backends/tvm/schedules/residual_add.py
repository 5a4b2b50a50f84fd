"""Residual add kernel: out = clamp(round((a - za) * ma + (b - zb) * mb, shift) + z, lo, hi),
the two sides requantized onto the output grid before one rounding (integer_rewrite's
_scale_terms with two terms), elementwise over NHWC tensors, 16 lanes; in int32 only for
8-bit sides and shifts in fixed_point.RESIDUAL_INT32_SHIFTS, else in int64.

Left to TVM, each residual add is its own fused PrimFunc with its zero points and multipliers
compiled in as immediates (MobileNetV2: 10 adds, 9 functions of ~1.1 KiB and 150-character
names). Here they are one int32 input (`table`), so one kernel serves every add of its shape.
"""

from __future__ import annotations

import functools

import numpy as np

from qcompiler.backends.tvm.schedules.requantize import Requantize, RequantizeCode, rounded_to_grid


def residual_table(zero_points: tuple[int, int], multipliers: tuple[int, int], requantize: Requantize) -> np.ndarray:
    """The kernel's int32 input: za, zb, ma, mb, then Requantize.values (z, lo, hi, shift)."""
    return np.array([*zero_points, *multipliers, *requantize.values], np.int32)


@functools.cache
def residual_add_kernel(shape: tuple, a_dtype: str, b_dtype: str, code: RequantizeCode):
    """The scheduled PrimFunc: a, b (`shape`, integer dtypes), table s32[8] -> code.dtype."""
    import tvm
    from tvm import te

    from qcompiler.backends.tvm.schedules.cpu_generic import vectorize_innermost

    a = te.placeholder(shape, a_dtype, name="a")
    b = te.placeholder(shape, b_dtype, name="b")
    table = te.placeholder((8,), "int32", name="residual_table")

    params = [table[4 + k] for k in range(4)]

    def compute(*i):
        ta, tb = a(*i).astype("int32") - table[0], b(*i).astype("int32") - table[1]
        if code.int32:
            return _int32_rounded(tvm, ta, tb, table, params, code)
        total = ta.astype("int64") * table[2].astype("int64") + tb.astype("int64") * table[3].astype("int64")
        return rounded_to_grid(tvm, total, params, code)

    out = te.compute(shape, compute, name="residual_add")
    sch = tvm.s_tir.Schedule(te.create_prim_func([a, b, table, out]))
    vectorize_innermost(sch, sch.get_sblock("residual_add"))
    name = f"qresidual_add_{'x'.join(map(str, shape))}_{a_dtype}_{b_dtype}{code.suffix}"
    # Opaque (op_pattern 8): TVM must not fuse a scheduled kernel with its neighbours.
    return sch.mod["main"].with_attrs({"global_symbol": name, "tirx.is_scheduled": True, "op_pattern": 8})


def _int32_rounded(tvm, ta, tb, table, params, code: RequantizeCode):
    """fixed_point.residual_add_int32 (its docstring has the why) plus zero point, clamp and
    cast: int32 vectors throughout (the int64 form's products cost vpmullq: 3% of MobileNetV2)."""
    zero_point, lo, hi, shift = params
    one, mask = tvm.tirx.const(1, "int32"), tvm.tirx.const(0xFFFF, "int32")
    high = ta * (table[2] >> 16) + tb * (table[3] >> 16)
    low = ta * (table[2] & mask) + tb * (table[3] & mask)
    combined = high + (low >> 16)
    rounded = (combined + (one << (shift - 17))) >> (shift - 16)
    if code.ties:
        tie = tvm.tirx.all((low & mask) == 0, (combined & ((one << (shift - 16)) - one)) == (one << (shift - 17)))
        rounded = rounded - tvm.tirx.if_then_else(tie, rounded & one, tvm.tirx.const(0, "int32"))
    return tvm.tirx.max(tvm.tirx.min(rounded + zero_point, hi), lo).astype(code.dtype)
