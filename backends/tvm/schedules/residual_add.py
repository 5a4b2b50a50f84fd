"""Residual add kernel: out = clamp(round((a - za) * ma + (b - zb) * mb, shift) + z, lo, hi),
the two sides requantized onto the output grid before one rounding (integer_rewrite's
_scale_terms with two terms), elementwise over NHWC tensors, 16 lanes.

Left to TVM, each residual add is its own fused PrimFunc with its zero points and multipliers
compiled in as immediates (MobileNetV2: 10 adds, 9 functions of ~1.1 KiB and 150-character
names). Here they are one int32 input (`table`), so one kernel serves every add of its shape.
"""

from __future__ import annotations

import functools

import numpy as np

from qcompiler.backends.tvm.schedules.int8_conv import Requantize, RequantizeCode, rounded_to_grid


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

    def term(x, index, zero_point, multiplier):
        return (x(*index).astype("int32") - table[zero_point]).astype("int64") * table[multiplier].astype("int64")

    out = te.compute(shape, lambda *i: rounded_to_grid(tvm, term(a, i, 0, 2) + term(b, i, 1, 3),
                                                       [table[4 + k] for k in range(4)], code), name="residual_add")
    sch = tvm.s_tir.Schedule(te.create_prim_func([a, b, table, out]))
    vectorize_innermost(sch, sch.get_sblock("residual_add"))
    name = f"qresidual_add_{'x'.join(map(str, shape))}_{a_dtype}_{b_dtype}{code.suffix}"
    # Opaque (op_pattern 8): TVM must not fuse a scheduled kernel with its neighbours.
    return sch.mod["main"].with_attrs({"global_symbol": name, "tirx.is_scheduled": True, "op_pattern": 8})
