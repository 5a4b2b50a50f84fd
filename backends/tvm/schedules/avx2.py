"""The AVX2 blocks of the convolution kernel (schedules/int8_conv.py) for CPUs with AVX2 and
no AVX-512 VNNI: tensor intrinsics used in place of vpdpbusd, each exact.

For 8-bit weights (`avx2`) the 16 x 4 block is exact 16-bit arithmetic:
`vpmaddwd` multiplies pairs of int16 and adds each pair into an int32 lane, so the 4 activation
bytes become two pairs of zero-extended words (one `vpshufb` each, from one broadcast) and the
weights are packed in pairs, [Co/16, KH, KW, Ci/4, 2, 16, 2], each half block sign-extended
once (`vpmovsxbw`) and shared by the tile's pixels. The faster `vpmaddubsw` (u8 x s8 pairs into
int16) saturates at 32767 where 255 * 127 * 2 does not fit; onnxruntime accepts that error on
AVX2 (its `reduce_range` option), we do not. Where every weight lies on the 4-bit grid (the
4-bit and 2-bit presets: |w| <= 8), a pair sum is at most 255 * 8 * 2 and `vpmaddubsw` is exact:
those layers use `avx2ub`, the VNNI layout and its packed 4-bit and 2-bit weights: per 8 lanes
one vpmaddubsw per block of 4 input channels, up to 8 blocks summed in int16, then one vpmaddwd
by ones (int16_steps). Layers with 8 (mod 16) outputs and few pixels take 8-lane blocks
(`avx2_8`), as vnni8 does.
"""

from __future__ import annotations

import functools

#: vpshufb masks (one int32 per lane, little-endian bytes) that zero-extend bytes 0, 1 (2, 3)
#: of each 32-bit lane to its two 16-bit halves: byte index, then 0x80 (a zero byte).
_PAIR_MASKS = (-0x7FFE8000, -0x7FFC7FFE)   # bytes [0, 0x80, 1, 0x80] and [2, 0x80, 3, 0x80]


@functools.cache
def pairs_intrinsic(name: str, a_dtype: str, lanes: int, llvm_name: str, emulated: bool) -> str:
    """The avx2 16 x 4 block, or 8 x 4 (avx2_8: one vpmaddwd per pair), on weights packed in
    pairs: C[i] += sum_k A[k] * B[k // 2, i, k % 2] (`emulated`: as loops)."""
    import tvm
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    half = 8   # int32 lanes per 256-bit vpmaddwd

    @T.prim_func(s_tir=True)
    def desc(A: T.Buffer((4,), a_dtype, offset_factor=1), B: T.Buffer((2, lanes, 2), "int8", offset_factor=1),
             C: T.Buffer((lanes,), "int32", offset_factor=1, scope="local")) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:4], B[0:2, 0:lanes, 0:2])
            T.writes(C[0:lanes])
            for i in T.serial(0, lanes):
                for k in T.serial(0, 4):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vk // 2, vi, vk % 2], "int32")

    def pairs(four, mask):   # the int8x32 broadcast bytes -> int16x16 words (a_2m, a_2m+1) per lane
        shuffled = T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pshuf.b"), four,
                                           T.reinterpret(T.broadcast(T.int32(mask), half), dtype="int8x32"),
                                           dtype="int8x32")
        return T.reinterpret(shuffled, dtype="int16x16")

    def madd(words, B, pair, h):   # 8 lanes: words . (sign-extended weight pairs of lanes 8h .. 8h + 7)
        weights = T.cast(B.vload([pair, h * half, 0], dtype="int8x16"), "int16x16")
        return T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id(llvm_name), words, weights, dtype="int32x8")

    def block_sums(four, B):   # int32 x lanes: two vpmaddwd per 8-lane group, the groups concatenated
        low, high = pairs(four, _PAIR_MASKS[0]), pairs(four, _PAIR_MASKS[1])
        groups = [madd(low, B, 0, h) + madd(high, B, 1, h) for h in range(lanes // half)]
        return groups[0] if len(groups) == 1 else tvm.tirx.Shuffle(groups, list(range(lanes)))

    @T.prim_func(s_tir=True)
    def impl(A: T.Buffer((4,), a_dtype, offset_factor=1), B: T.Buffer((2, lanes, 2), "int8", offset_factor=1),
             C: T.Buffer((lanes,), "int32", offset_factor=1, scope="local")) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:4], B[0:2, 0:lanes, 0:2])
            T.writes(C[0:lanes])
            four = T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], "uint8x4"), dtype="int32"), half),
                                 dtype="int8x32")
            C[T.ramp(T.int32(0), 1, lanes)] = C.vload([0], f"int32x{lanes}") + block_sums(four, B)

    if emulated:
        name += "_emulated"
    TensorIntrin.register(name, desc, desc if emulated else impl, override=True)
    return name


def int16_steps(ci: int) -> int:
    """Blocks of 4 input channels whose avx2ub products are summed in int16 before widening:
    each vpmaddubsw lane is at most 255 * 8 * 2 = 4080 in magnitude, so 8 sum to at most
    32640; the most of 8, 6, 4, 3, 2 that divides the ci / 4 blocks (1: one block, ub_impl)."""
    return next((s for s in (8, 6, 4, 3, 2) if ci // 4 % s == 0), 1)


@functools.cache
def ub_steps_intrinsic(steps: int, emulated: bool) -> str:
    """The avx2ub intrinsic over `steps` consecutive blocks of 4 input channels: per 8 lanes
    `steps` vpmaddubsw summed in int16 (exact: int16_steps) and one vpmaddwd by ones, where
    one block at a time takes a vpmaddwd each."""
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    lanes, half = 16, 8
    name = f"qcompiler_avx2ub_u8s4s32_16x4x{steps}" + ("_emulated" if emulated else "")

    @T.prim_func(s_tir=True)
    def desc(A: T.Buffer((4 * steps,), "uint8", offset_factor=1),
             B: T.Buffer((steps, lanes, 4), "int8", offset_factor=1),
             C: T.Buffer((lanes,), "int32", offset_factor=1, scope="local")) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:4 * steps], B[0:steps, 0:lanes, 0:4])
            T.writes(C[0:lanes])
            for j, i, k in T.grid(steps, lanes, 4):
                with T.sblock("update"):
                    vi = T.axis.spatial(lanes, i)
                    vr = T.axis.reduce(4 * steps, j * 4 + k)
                    C[vi] = C[vi] + T.cast(A[vr], "int32") * T.cast(B[vr // 4, vi, vr % 4], "int32")

    @T.prim_func(s_tir=True)
    def impl(A: T.Buffer((4 * steps,), "uint8", offset_factor=1),
             B: T.Buffer((steps, lanes, 4), "int8", offset_factor=1),
             C: T.Buffer((lanes,), "int32", offset_factor=1, scope="local")) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:4 * steps], B[0:steps, 0:lanes, 0:4])
            T.writes(C[0:lanes])
            C[T.ramp(T.int32(0), 1, lanes)] = C.vload([0], "int32x16") + _ub_sums(
                A, lambda j, h: B.vload([j, h * half, 0], dtype="int8x32"), steps)

    TensorIntrin.register(name, desc, desc if emulated else impl, override=True)
    return name


def ub_impl(lanes: int):
    """The 16 x 4 block on AVX2 for weights on the 4-bit grid, one block at a time (ci / 4 with
    no divisor in int16_steps): per 8 lanes one vpmaddubsw and one vpmaddwd by ones."""
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def impl(A: T.Buffer((4,), "uint8", offset_factor=1), B: T.Buffer((lanes, 4), "int8", offset_factor=1),
             C: T.Buffer((lanes,), "int32", offset_factor=1, scope="local")) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:4], B[0:lanes, 0:4])
            T.writes(C[0:lanes])
            C[T.ramp(T.int32(0), 1, lanes)] = C.vload([0], "int32x16") + _ub_sums(
                A, lambda j, h: B.vload([h * 8, 0], dtype="int8x32"), 1)

    return impl


def _ub_sums(A, weights, steps: int):
    """int32x16: for each group h of 8 lanes, the vpmaddubsw of block j's 4 activation bytes
    A[4j:4j+4] (broadcast) with `weights(j, h)` (int8x32: 8 lanes x 4), summed over the `steps`
    blocks in int16, then a vpmaddwd by ones adds each lane's two pair sums into int32."""
    import tvm
    from tvm.script import tirx as T

    def pair_sums(j, h):
        four = T.reinterpret(T.broadcast(T.reinterpret(A.vload([4 * j], "uint8x4"), dtype="int32"), 8),
                             dtype="int8x32")
        return T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.ub.sw"), four,
                                       weights(j, h), dtype="int16x16")

    groups = []
    for h in range(2):
        total = pair_sums(0, h)
        for j in range(1, steps):
            total = total + pair_sums(j, h)
        groups.append(T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"), total,
                                              T.broadcast(T.int16(1), 16), dtype="int32x8"))
    return tvm.tirx.Shuffle(groups, list(range(16)))
