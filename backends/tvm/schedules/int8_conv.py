"""int8 convolution kernels (NHWC activations, packed weights) on dot-product instructions:
u8 x s8 -> s32 on AVX-512 VNNI (`vpdpbusd`), and s8 x s8 -> s32 on AArch64 `sdot`.

The kernel computes acc[n, h, w, co] = sum_{ry, rx, ci} x[n, h*s + ry*d, w*s + rx*d, ci] * w[co, ry, rx, ci]
with the weights packed [Co/16, KH, KW, Ci/4, 16, 4]: the innermost 16 x 4 block is one
`vpdpbusd` (16 int32 lanes, each a 4-byte dot product). Loops: output rows, a tile of WT
output pixels, blocks of 16 output channels; the WT x 16 accumulators stay in registers
(a local cache written back once). Padding is materialized in the kernel, with 0 or with the
input's zero point (`pad_value`). 1x1 convolutions and matmuls use the same kernel; a
layer with 8 (mod 16) outputs and few output pixels uses 8-channel blocks (`vnni8`: vpdpbusd on
256-bit registers) rather than padded weights.

TVM 0.27's own `dot_16x4_vnni` intrinsic does not compile with its bundled LLVM 22 (operand
vector types, docs/backend.md); ours broadcasts the 4 activation bytes as one int32 to 16 lanes
and passes them as u8x64, the weight block as i8x64.

`sdot` multiplies signed bytes only, so on AArch64 the kernel first moves the uint8 activations
to int8 (x - 128, inside the kernel) and the caller adds 128 * sum(w) per output channel to the
accumulator's correction. The same packed 16 x 4 weight block is then four 4 x 4 `sdot` blocks.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from qcompiler.backends.tvm.fixed_point import accumulator_bound

INTRIN = "qcompiler_vnni_u8s8s32_16x4"
SDOT_INTRIN = "qcompiler_sdot_s8s8s32_4x4"


# (name, activation dtype, output lanes, LLVM intrinsic) of each dot-product instruction used.
# vnni8 is vpdpbusd on 256-bit registers, for layers with 8 (mod 16) outputs and few pixels:
# their weights then need no padding to 16 (MobileNetV2's classifier: 1000 outputs, 10 KiB).
DOT_INSTRUCTIONS = {
    "vnni": (INTRIN, "uint8", 16, "llvm.x86.avx512.vpdpbusd.512"),
    "vnni8": ("qcompiler_vnni_u8s8s32_8x4", "uint8", 8, "llvm.x86.avx512.vpdpbusd.256"),
    "sdot": (SDOT_INTRIN, "int8", 4, "llvm.aarch64.neon.sdot.v4i32.v16i8"),
}


def channel_block(isa: str) -> int:
    """Output channels per packed weight block (the kernel's channel multiple)."""
    return 8 if isa == "vnni8" else 16


@functools.cache
def register_intrinsic(isa: str = "vnni") -> str:
    """The tensor intrinsic of one dot-product instruction: `lanes` int32 accumulators (in
    registers: local scope, as the kernel's tiles are), each += the dot product of the same 4
    activation bytes with its own 4 weight bytes. The implementation broadcasts the 4 bytes,
    read as one int32, to every lane and calls the LLVM intrinsic on whole vectors."""
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    name, a_dtype, lanes, llvm_name = DOT_INSTRUCTIONS[isa]
    a_x4, a_all, b_all, c_all = f"{a_dtype}x4", f"{a_dtype}x{4 * lanes}", f"int8x{4 * lanes}", f"int32x{lanes}"

    @T.prim_func(s_tir=True)
    def desc(A: T.Buffer((4,), a_dtype, offset_factor=1), B: T.Buffer((lanes, 4), "int8", offset_factor=1),
             C: T.Buffer((lanes,), "int32", offset_factor=1, scope="local")) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:4], B[0:lanes, 0:4])
            T.writes(C[0:lanes])
            for i in T.serial(0, lanes):
                for k in T.serial(0, 4):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")

    @T.prim_func(s_tir=True)
    def impl(A: T.Buffer((4,), a_dtype, offset_factor=1), B: T.Buffer((lanes, 4), "int8", offset_factor=1),
             C: T.Buffer((lanes,), "int32", offset_factor=1, scope="local")) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:4], B[0:lanes, 0:4])
            T.writes(C[0:lanes])
            four = T.reinterpret(A.vload([0], a_x4), dtype="int32")
            C[T.ramp(T.int32(0), 1, lanes)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id(llvm_name), C.vload([0], c_all),
                T.reinterpret(T.broadcast(four, lanes), dtype=a_all), B.vload([0, 0], dtype=b_all), dtype=c_all)

    TensorIntrin.register(name, desc, impl, override=True)
    return name


def pack_weight(weight_ohwi: np.ndarray, block: int = 16) -> np.ndarray:
    """[Co, KH, KW, Ci] int8 -> [Co/B, KH, KW, Ci/4, B, 4] for B = `block` output channels
    (Co, Ci already multiples of B, 4)."""
    co, kh, kw, ci = weight_ohwi.shape
    return np.ascontiguousarray(weight_ohwi.reshape(co // block, block, kh, kw, ci // 4, 4).transpose(0, 2, 3, 4, 1, 5))


def pixel_tile(width: int) -> int:
    """Output pixels per register tile: the largest of 8, 7, 4, 2, 1 dividing the output width."""
    return next(t for t in (8, 7, 6, 4, 2, 1) if width % t == 0)


@dataclass(frozen=True)
class RequantizeCode:
    """What shapes a kernel's requantization code: the output dtype and whether exact ties can
    occur (False: fixed_point.ties_possible ruled them out; round half up, cheaper)."""

    dtype: str
    ties: bool = True
    int32: bool = False   # the accumulator stays below 2**20: the product in three int32 parts

    @property
    def suffix(self) -> str:
        return f"_rq_{self.dtype}{'_t' * self.ties}{'_i' * self.int32}"


@dataclass(frozen=True)
class Requantize:
    """The epilogue fused into a kernel: out = clamp(round_half_even(((acc + corr) * m) >> shift)
    + zero_point, lo, hi) as `dtype`. corr and m per channel, zero point, bounds and shift per
    layer: all kernel inputs (requantize_table), so that one kernel serves every layer of its
    shape (constants in the code made 45 MobileNetV2 kernels of 29 shapes)."""

    zero_point: int
    lo: int
    hi: int
    dtype: str
    shift: int
    ties: bool = True

    def code_for(self, weight: np.ndarray, corr: np.ndarray, input_max: int) -> RequantizeCode:
        """The code for a layer with these int8 weights (output channels first), per-channel
        corrections and inputs up to `input_max` in magnitude: the int32 form where no
        accumulator reaches 2**20 (255 * sum|w| + |corr| per channel) and no tie can occur."""
        bound = accumulator_bound(weight, 0, corr, input_max)
        fits = not self.ties and 23 <= self.shift <= 53 and int(bound.max()) < 2 ** INT32_ACCUMULATOR_BITS
        return RequantizeCode(self.dtype, self.ties, fits)

    @property
    def values(self) -> np.ndarray:
        return np.array([self.zero_point, self.lo, self.hi, self.shift], np.int32)


def requantize_table(corr: np.ndarray, multiplier: np.ndarray, requantize: Requantize, channels: int,
                     padded: int) -> np.ndarray:
    """A layer's requantization as one int32 kernel input: corr and m per output channel (zero
    in the padded channels), then Requantize.values. One constant instead of three: each of the
    VM's constants costs ~58 bytes of library."""
    table = np.zeros(2 * padded + 4, np.int32)
    table[:channels] = np.broadcast_to(corr.reshape(-1), (channels,))
    table[padded:padded + channels] = np.broadcast_to(multiplier.reshape(-1), (channels,))
    table[2 * padded:] = requantize.values
    return table


def requantized(tvm, te, acc, channels: int, code: RequantizeCode, shape=None, read=None):
    """The fused requantization over `shape` (default: acc's), reading the accumulator with
    `read(b, y, x, o)` (default: acc[b, y, x, o]); returns it and its kernel input, the layer's
    requantize_table s32[2 * channels + 4]: corr, m, then zero point, lo, hi, shift."""
    read = read or (lambda b, y, x, o: acc[b, y, x, o])
    table = te.placeholder((2 * channels + 4,), "int32", name="requantize_table")

    def corr(o):
        return table[o]

    def m(o):
        return table[channels + o]

    params = [table[2 * channels + i] for i in range(4)]
    if code.int32:
        return te.compute(shape or acc.shape, _int32_requantize(tvm, read, corr, m, params, code.dtype),
                          name="requantize"), [table]

    def compute(b, y, x, o):
        product = (read(b, y, x, o) + corr(o)).astype("int64") * m(o).astype("int64")
        return rounded_to_grid(tvm, product, params, code)

    return te.compute(shape or acc.shape, compute, name="requantize"), [table]


def rounded_to_grid(tvm, product, params, code: RequantizeCode):
    """An int64 fixed-point value shifted right by `bits` with rounding (half to even, or half
    up where code.ties is False), plus the zero point, clamped to [lo, hi], cast to code.dtype;
    params = (zero point, lo, hi, bits) as int32 expressions."""
    zero_point, lo, hi, bits = (p.astype("int64") for p in params)
    one = tvm.tirx.const(1, "int64")
    if code.ties:
        odd = (product >> bits) & one
        rounded = ((product + ((one << (bits - one)) - one) + odd) >> bits) + zero_point
    else:
        rounded = ((product + (one << (bits - one))) >> bits) + zero_point
    return tvm.tirx.max(tvm.tirx.min(rounded, hi), lo).astype(code.dtype)


INT32_ACCUMULATOR_BITS = 20   # |acc + corr| < 2**20: each 11-bit part of m times it fits int32


def _int32_requantize(tvm, read, corr, m, params, dtype: str):
    """The half-up requantization in int32 only, for accumulators below 2**20 (the layers with
    few input channels, where the int64 form costs more than the dot products): m in three
    11-bit parts, a * m = p2 * 2**22 + p1 * 2**11 + p0, each part's product in int32. With a
    shift s >= 23, floor((a*m + 2**(s-1)) / 2**s) depends on the low parts only through their
    carries, so for 23 <= s <= 53 it equals floor((p2 + carry + 2**(s-23)) / 2**(s-22)) exactly
    (fixed_point.requantize_int32_parts is the numpy reference)."""
    zero_point, lo, hi, bits = params
    mask = tvm.tirx.const(2047, "int32")

    def compute(b, y, x, o):
        a, mult = read(b, y, x, o) + corr(o), m(o)
        low, mid, high = a * (mult & mask), a * ((mult >> 11) & mask), a * (mult >> 22)
        top = high + ((mid + (low >> 11)) >> 11)
        rounded = ((top + (tvm.tirx.const(1, "int32") << (bits - 23))) >> (bits - 22)) + zero_point
        return tvm.tirx.max(tvm.tirx.min(rounded, hi), lo).astype(dtype)

    return compute


def output_size(h: int, w: int, kh: int, kw: int, stride: tuple, dilation: tuple, padding: tuple) -> tuple[int, int]:
    """(rows, columns) of a convolution's output; padding is (top, left, bottom, right)."""
    top, left, bottom, right = padding
    return ((h + top + bottom - dilation[0] * (kh - 1) - 1) // stride[0] + 1,
            (w + left + right - dilation[1] * (kw - 1) - 1) // stride[1] + 1)


def padded_input(topi, x, padding: tuple, pad_value: int = 0):
    """The NHWC input padded by (top, left, bottom, right) with `pad_value` (x itself when no padding)."""
    top, left, bottom, right = padding
    if not any(padding):
        return x
    return topi.nn.pad(x, [0, top, left, 0], [0, bottom, right, 0], pad_value=pad_value, name="padded")


def pack_weight_int4(weight_ohwi: np.ndarray, block: int = 16) -> np.ndarray:
    """Weights in [-8, 7] two to a byte: [Co/B, KH, KW, Ci/4, 2B] uint8. Byte j of a B x 4
    block holds element j in its low nibble and element j + 2B in its high nibble, so that each
    half of the block decodes from one contiguous load with two shifts (_unpacked_int4)."""
    blocks = pack_weight(weight_ohwi, block).astype(np.int16)
    flat = blocks.reshape(*blocks.shape[:4], 4 * block) & 0xF
    return (flat[..., :2 * block] | (flat[..., 2 * block:] << 4)).astype(np.uint8)


def _unpacked_int4(tvm, te, packed, co: int, kh: int, kw: int, ci: int, block: int):
    """The int8 weight blocks decoded from nibbles (pack_weight_int4), sign-extended by shifts
    in int8: the low nibble by (b << 4) >> 4, the high one by b >> 4."""
    half, four = 2 * block, tvm.tirx.const(4, "int8")

    def decode(a, p, q, c, i, k):
        index = i * 4 + k
        byte = packed[a, p, q, c, index % half].astype("int8")
        return tvm.tirx.if_then_else(index < half, (byte << four) >> four, byte >> four)

    return te.compute((co // block, kh, kw, ci // 4, block, 4), decode, name="unpack")


def pack_weight_int2(weight_ohwi: np.ndarray, block: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Weights spanning at most 4 consecutive values per output channel (the 2-bit presets,
    zero point folded in) four to a byte: ([Co/B, KH, KW, Ci/4, B] uint8, offsets int8[Co]),
    each weight its channel's offset + a 2-bit field; byte j of a B x 4 block holds elements
    j, j + B, j + 2B, j + 3B in bits 0-1, 2-3, 4-5, 6-7 (a quarter block per shift)."""
    offsets = weight_ohwi.reshape(weight_ohwi.shape[0], -1).min(axis=1).astype(np.int8)
    fields = pack_weight((weight_ohwi - offsets[:, None, None, None]).astype(np.int8), block).astype(np.uint8)
    flat = fields.reshape(*fields.shape[:4], 4 * block)
    quarters = [flat[..., q * block:(q + 1) * block] << (2 * q) for q in range(4)]
    return (quarters[0] | quarters[1] | quarters[2] | quarters[3]).astype(np.uint8), offsets


def fits_int2(weight_ohwi: np.ndarray) -> bool:
    """Whether every output channel's weights span at most 4 consecutive values."""
    flat = weight_ohwi.reshape(weight_ohwi.shape[0], -1).astype(np.int16)
    return bool(np.all(flat.max(axis=1) - flat.min(axis=1) <= 3))


def _unpacked_int2(te, packed, offsets, co: int, kh: int, kw: int, ci: int, block: int):
    """The int8 weight blocks decoded from pack_weight_int2's 2-bit fields plus their channel's offset."""
    def decode(a, p, q, c, i, k):
        index = i * 4 + k
        field = (packed[a, p, q, c, index % block] >> (2 * (index // block)).astype("uint8")) & 3
        return field.astype("int8") + offsets[a * block + i]

    return te.compute((co // block, kh, kw, ci // 4, block, 4), decode, name="unpack")


@functools.cache
def conv2d_kernel(n: int, h: int, w: int, ci: int, co: int, kh: int, kw: int, stride: tuple, dilation: tuple,
                  padding: tuple, requantize: RequantizeCode | None = None, weight_bits: int = 8, isa: str = "vnni",
                  pad_value: int = 0):
    """The scheduled PrimFunc (x u8 NHWC, packed weight -> s32 NHWC; or, with `requantize`,
    x, weight, requantize_table s32[2 * co + 4] -> u8/s8 NHWC);
    ci % 4 == co % channel_block(isa) == 0.

    With `weight_bits` 4 the weight comes packed two to a byte (pack_weight_int4), with 2 four
    to a byte followed by int8 offsets per channel (pack_weight_int2); each block of output
    channels is then decoded into a small buffer once per call and reused for every pixel: the
    loops over channel blocks move outside the pixel loops for that."""
    import tvm
    from tvm import te, topi

    cblock = channel_block(isa)
    x = te.placeholder((n, h, w, ci), "uint8", name="x")
    packed = weight_bits < 8
    if weight_bits == 4:
        weights = [te.placeholder((co // cblock, kh, kw, ci // 4, 2 * cblock), "uint8", name="w4")]
        wp = _unpacked_int4(tvm, te, weights[0], co, kh, kw, ci, cblock)
    elif weight_bits == 2:
        weights = [te.placeholder((co // cblock, kh, kw, ci // 4, cblock), "uint8", name="w2"),
                   te.placeholder((co,), "int8", name="w2_offsets")]
        wp = _unpacked_int2(te, *weights, co, kh, kw, ci, cblock)
    else:
        weights = [te.placeholder((co // cblock, kh, kw, ci // 4, cblock, 4), "int8", name="w")]
        wp = weights[0]
    padded = padded_input(topi, x, padding, pad_value)
    if isa == "sdot":   # u8 -> s8 (x - 128): sdot is signed only; the caller corrects by 128 * sum(w)
        padded = te.compute(padded.shape, lambda *i: (padded(*i).astype("int32") - 128).astype("int8"),
                            name="signed")
    ho, wo = output_size(h, w, kh, kw, stride, dilation, padding)
    ry, rx, rc = te.reduce_axis((0, kh), "ry"), te.reduce_axis((0, kw), "rx"), te.reduce_axis((0, ci), "rc")
    out = te.compute(
        (n, ho, wo, co),
        lambda b, y, xx, o: te.sum(
            padded[b, y * stride[0] + ry * dilation[0], xx * stride[1] + rx * dilation[1], rc].astype("int32")
            * wp[o // cblock, ry, rx, rc // 4, o % cblock, rc % 4].astype("int32"), axis=[ry, rx, rc]),
        name="conv")
    params = [x, *weights, out]
    if requantize is not None:
        requant, rq_inputs = requantized(tvm, te, out, co, requantize)
        params = [x, *weights, *rq_inputs, requant]
    sch = tvm.s_tir.Schedule(te.create_prim_func(params))
    block = sch.get_sblock("conv")
    b, y, xx, o, r_y, r_x, r_c = sch.get_loops(block)
    if isa == "sdot":
        o_outer, o_block, o_inner = sch.split(o, [None, 4, 4])
    else:
        o_outer, o_inner = sch.split(o, [None, cblock])
        o_block = None
    c_outer, c_inner = sch.split(r_c, [None, 4])
    inner_loops = [o_inner, c_inner] if o_block is None else [o_block, o_inner, c_inner]
    x_outer, x_inner = sch.split(xx, [None, pixel_tile(wo)])
    if packed:
        sch.reorder(b, o_outer, y, x_outer, r_y, r_x, c_outer, x_inner, *inner_loops)
        tile = x_outer
        unpack = sch.get_sblock("unpack")
        sch.compute_at(unpack, o_outer)
        parts = 8 // weight_bits   # fields per byte
        part, inner = sch.split(sch.fuse(*sch.get_loops(unpack)[-2:]), [parts, 4 * cblock // parts])
        sch.unroll(part)   # each part one vector: its shift is a constant, no per-lane select
        sch.vectorize(inner)
    else:
        sch.reorder(b, y, x_outer, o_outer, r_y, r_x, c_outer, x_inner, *inner_loops)
        tile = o_outer
    write_back = sch.cache_write(block, 0, "local")
    sch.reverse_compute_at(write_back, tile)
    init = sch.decompose_reduction(block, r_y)
    sch.tensorize(o_inner, register_intrinsic(isa))
    if o_block is not None:
        sch.unroll(o_block)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.unroll(x_inner)
    if requantize is not None:   # computed from the registers on the way out: no int32 round trip
        sch.reverse_compute_inline(sch.get_sblock("requantize"))
    sch.vectorize(sch.get_loops(write_back)[-1])
    name = f"qconv2d_{isa}_{n}x{h}x{w}x{ci}_{co}x{kh}x{kw}_s{stride[0]}d{dilation[0]}p{'_'.join(map(str, padding))}"
    if packed:
        name += f"_w{weight_bits}"
    if pad_value:
        name += f"_z{pad_value}"
    if requantize is not None:
        name += requantize.suffix
    # Opaque (op_pattern 8): TVM must not fuse a scheduled kernel with its neighbours.
    return sch.mod["main"].with_attrs({"global_symbol": name, "tirx.is_scheduled": True, "op_pattern": 8})
