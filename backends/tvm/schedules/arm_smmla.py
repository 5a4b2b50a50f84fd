"""s8 x s8 -> s32 convolution on AArch64 i8mm `smmla` (a 2x8 by 8x2 matrix product per instruction).

`smmla` multiplies two 2 x 8 int8 matrices into a 2 x 2 int32 tile, so the kernel works on
pairs of output pixels and pairs of output channels: activations are regrouped (inside the
kernel, moved to int8 as x - 128 like the sdot kernel) as [N, Ho, Wo/2, KH, KW, Ci/8, 2, 8],
one im2col-style row pair per pixel pair, and weights packed [Co/2, KH, KW, Ci/8, 2, 8]. A tile
of pixel pairs x 16 output channels accumulates in registers; the requantization reads it back.
Needs Ci % 8 == 0, Co % 16 == 0 and an even output width; the caller adds 128 * sum(w) to the
correction. TVM has no smmla intrinsic: ours calls `llvm.aarch64.neon.smmla.v4i32.v16i8`.
"""

from __future__ import annotations

import functools

import numpy as np

from qcompiler.backends.tvm.schedules.geometry import output_size, padded_input
from qcompiler.backends.tvm.schedules.requantize import RequantizeCode, requantized

SMMLA_INTRIN = "qcompiler_smmla_s8s8s32_2x8x2"


@functools.cache
def register_intrinsic() -> str:
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def desc(A: T.Buffer((2, 8), "int8", offset_factor=1), B: T.Buffer((2, 8), "int8", offset_factor=1),
             C: T.Buffer((2, 2), "int32", offset_factor=1, scope="local")) -> None:
        with T.sblock("root"):
            T.reads(C[0:2, 0:2], A[0:2, 0:8], B[0:2, 0:8])
            T.writes(C[0:2, 0:2])
            for j, i, k in T.grid(2, 2, 8):
                with T.sblock("update"):
                    vj, vi, vk = T.axis.remap("SSR", [j, i, k])
                    C[vj, vi] = C[vj, vi] + T.cast(A[vj, vk], "int32") * T.cast(B[vi, vk], "int32")

    @T.prim_func(s_tir=True)
    def impl(A: T.Buffer((2, 8), "int8", offset_factor=1), B: T.Buffer((2, 8), "int8", offset_factor=1),
             C: T.Buffer((2, 2), "int32", offset_factor=1, scope="local")) -> None:
        with T.sblock("root"):
            T.reads(C[0:2, 0:2], A[0:2, 0:8], B[0:2, 0:8])
            T.writes(C[0:2, 0:2])
            C[0, T.ramp(T.int32(0), 1, 4)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.smmla.v4i32.v16i8"), C.vload([0, 0], "int32x4"),
                A.vload([0, 0], "int8x16"), B.vload([0, 0], "int8x16"), dtype="int32x4")

    TensorIntrin.register(SMMLA_INTRIN, desc, impl, override=True)
    return SMMLA_INTRIN


def pack_weight(weight_ohwi: np.ndarray) -> np.ndarray:
    """[Co, KH, KW, Ci] int8 -> [Co/2, KH, KW, Ci/8, 2, 8]."""
    co, kh, kw, ci = weight_ohwi.shape
    return np.ascontiguousarray(weight_ohwi.reshape(co // 2, 2, kh, kw, ci // 8, 8).transpose(0, 2, 3, 4, 1, 5))


def applies(ci: int, co: int, wo: int) -> bool:
    return ci % 8 == 0 and co % 16 == 0 and wo % 2 == 0


@functools.cache
def conv2d_kernel(n: int, h: int, w: int, ci: int, co: int, kh: int, kw: int, stride: tuple, dilation: tuple,
                  padding: tuple, requantize: RequantizeCode, pad_value: int = 0):
    """x u8 NHWC, packed weight, requantize_table s32[2 * co + 4] -> requantized NHWC."""
    import tvm
    from tvm import te, topi

    x = te.placeholder((n, h, w, ci), "uint8", name="x")
    weight = te.placeholder((co // 2, kh, kw, ci // 8, 2, 8), "int8", name="w")
    padded = padded_input(topi, x, padding, pad_value)
    ho, wo = output_size(h, w, kh, kw, stride, dilation, padding)
    pairs = te.compute(
        (n, ho, wo // 2, kh, kw, ci // 8, 2, 8),
        lambda b, y, p, r, s, c, j, k: (padded[b, y * stride[0] + r * dilation[0],
                                               (2 * p + j) * stride[1] + s * dilation[1], c * 8 + k].astype("int32")
                                        - 128).astype("int8"), name="pairs")
    ry, rx = te.reduce_axis((0, kh), "ry"), te.reduce_axis((0, kw), "rx")
    rc, rk = te.reduce_axis((0, ci // 8), "rc"), te.reduce_axis((0, 8), "rk")
    acc = te.compute(
        (n, ho, wo // 2, co // 2, 2, 2),
        lambda b, y, p, o, j, i: te.sum(pairs[b, y, p, ry, rx, rc, j, rk].astype("int32")
                                        * weight[o, ry, rx, rc, i, rk].astype("int32"), axis=[ry, rx, rc, rk]),
        name="conv")
    out, rq_inputs = requantized(tvm, te, acc, co, requantize, shape=(n, ho, wo, co),
                                 read=lambda b, y, xx, o: acc[b, y, xx // 2, o // 2, xx % 2, o % 2])
    sch = tvm.s_tir.Schedule(te.create_prim_func([x, weight, *rq_inputs, out]))
    if any(padding):
        sch.compute_inline(sch.get_sblock("padded"))
    block = sch.get_sblock("conv")
    b, y, p, o, j, i, r_y, r_x, r_c, r_k = sch.get_loops(block)
    tile = next(t for t in (4, 2, 1) if (wo // 2) % t == 0)
    p_outer, p_inner = sch.split(p, [None, tile])
    o_outer, o_block = sch.split(o, [None, 8])
    sch.reorder(b, y, p_outer, o_outer, r_y, r_x, r_c, p_inner, o_block, j, i, r_k)
    write_back = sch.cache_write(block, 0, "local")
    sch.reverse_compute_at(write_back, o_outer)
    sch.decompose_reduction(block, r_y)
    sch.tensorize(j, register_intrinsic())
    sch.unroll(p_inner)
    sch.unroll(o_block)
    requant = sch.get_sblock("requantize")
    sch.reverse_compute_at(requant, o_outer)
    sch.vectorize(sch.get_loops(requant)[-1])
    name = (f"qconv2d_smmla_{n}x{h}x{w}x{ci}_{co}x{kh}x{kw}_s{stride[0]}d{dilation[0]}p{'_'.join(map(str, padding))}"
            + requantize.suffix + (f"_z{pad_value}" if pad_value else ""))
    # Opaque (op_pattern 8): TVM must not fuse a scheduled kernel with its neighbours.
    return sch.mod["main"].with_attrs({"global_symbol": name, "tirx.is_scheduled": True, "op_pattern": 8})
