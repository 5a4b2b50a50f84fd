"""int8 convolution kernels (NHWC activations, packed weights) on dot-product instructions:
the intrinsics and the kernel; the weight layout is in packing.py, the requantization epilogue
in requantize.py, the shared geometry in geometry.py.

u8 x s8 -> s32 on AVX-512 VNNI (`vpdpbusd`) and Hexagon HVX (`vrmpy`, 32 lanes: blocks of 32
output channels), and s8 x s8 -> s32 on AArch64 `sdot`.

The kernel computes acc[n, h, w, co] = sum_{ry, rx, ci} x[n, h*s + ry*d, w*s + rx*d, ci] * w[co, ry, rx, ci]
with the weights packed [Co/16, KH, KW, Ci/4, 16, 4]: the innermost 16 x 4 block is one
`vpdpbusd` (16 int32 lanes, each a 4-byte dot product). Loops: output rows, a tile of WT
output pixels, blocks of 16 output channels; the WT x 16 accumulators stay in registers
(a local cache written back once). Padding is materialized in the kernel, with 0 or with the
input's zero point (`pad_value`). 1x1 convolutions and matmuls use the same kernel; a
layer with 8 (mod 16) outputs and few output pixels uses 8-channel blocks (`vnni8`: vpdpbusd on
256-bit registers) rather than padded weights.

On CPUs with AVX2 but no VNNI the blocks are exact 16-bit arithmetic instead (`avx2`,
`avx2_8`, `avx2ub`: avx2.py).

TVM 0.27's own `dot_16x4_vnni` intrinsic does not compile with its bundled LLVM 22 (operand
vector types, docs/backend.md); ours broadcasts the 4 activation bytes as one int32 to 16 lanes
and passes them as u8x64, the weight block as i8x64.

`sdot` multiplies signed bytes only, so on AArch64 the kernel first moves the uint8 activations
to int8 (x - 128, inside the kernel) and the caller adds 128 * sum(w) per output channel to the
accumulator's correction. The same packed 16 x 4 weight block is then four 4 x 4 `sdot` blocks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools

from qcompiler.backends.tvm.schedules import avx2
from qcompiler.backends.tvm.schedules.geometry import KernelGeometry, output_size, padded_input, pixel_tile
from qcompiler.backends.tvm.schedules.packing import unpacked_int2, unpacked_int4
from qcompiler.backends.tvm.schedules.requantize import RequantizeCode, requantized

INTRIN = "qcompiler_vnni_u8s8s32_16x4"
SDOT_INTRIN = "qcompiler_sdot_s8s8s32_4x4"


# (name, activation dtype, output lanes, LLVM intrinsic) of each dot-product instruction used.
# vnni8 is vpdpbusd on 256-bit registers, for layers with 8 (mod 16) outputs and few pixels:
# their weights then need no padding to 16 (MobileNetV2's classifier: 1000 outputs, 10 KiB).
# vrmpy is Hexagon HVX's vrmpy(Vu.ub, Vv.b) accumulating (128-byte vectors: 32 int32 lanes).
DOT_INSTRUCTIONS = {
    "vnni": (INTRIN, "uint8", 16, "llvm.x86.avx512.vpdpbusd.512"),
    "vnni8": ("qcompiler_vnni_u8s8s32_8x4", "uint8", 8, "llvm.x86.avx512.vpdpbusd.256"),
    "sdot": (SDOT_INTRIN, "int8", 4, "llvm.aarch64.neon.sdot.v4i32.v16i8"),
    "vrmpy": ("qcompiler_vrmpy_u8s8s32_32x4", "uint8", 32, "llvm.hexagon.V6.vrmpybusv.acc.128B"),
    "avx2": ("qcompiler_avx2_u8s8s32_16x4", "uint8", 16, "llvm.x86.avx2.pmadd.wd"),
    "avx2_8": ("qcompiler_avx2_u8s8s32_8x4", "uint8", 8, "llvm.x86.avx2.pmadd.wd"),
    "avx2ub": ("qcompiler_avx2ub_u8s4s32_16x4", "uint8", 16, "llvm.x86.avx2.pmadd.ub.sw"),
}

#: Instructions whose LLVM intrinsic takes every vector as int32 words (HVX: <32 x i32>).
WORD_OPERANDS = {"vrmpy"}

#: Instructions of targets whose kernels run on one thread (Hexagon: cpu_generic.threaded).
SINGLE_THREADED = {"vrmpy"}

#: u8 x s8 instructions: no x - 128 shift and no correction by 128 * sum(w) (sdot is s8 x s8).
UNSIGNED_ACTIVATIONS = {"vnni", "vnni8", "vrmpy", "avx2", "avx2_8", "avx2ub"}

#: Instructions whose weight blocks are packed in pairs of input channels (packing.pack_weight_pairs).
PAIRED_WEIGHTS = {"avx2", "avx2_8"}

#: Instructions on AVX2's 16 vector registers (the others have 32).
SIXTEEN_REGISTERS = {"avx2", "avx2_8", "avx2ub"}


def channel_block(isa: str) -> int:
    """Output channels per packed weight block (the kernel's channel multiple)."""
    return {"vnni8": 8, "avx2_8": 8, "vrmpy": 32}.get(isa, 16)


#: Set inside `emulated_dot_products()`.
_EMULATED = False


@contextlib.contextmanager
def emulated_dot_products():
    """Kernels made inside use plain loops where the dot-product instruction would be: the
    host twin of a kernel for another CPU (the same schedule, packing and requantization),
    which kernel_check.py runs here to check each Hexagon kernel fed the DSP's inputs."""
    from qcompiler.backends.tvm.schedules import depthwise

    global _EMULATED
    conv2d_kernel.cache_clear()
    depthwise.depthwise_kernel.cache_clear()
    _EMULATED = True
    try:
        yield
    finally:
        _EMULATED = False
        conv2d_kernel.cache_clear()
        depthwise.depthwise_kernel.cache_clear()


def emulating() -> bool:
    """Whether kernels made now emulate their dot-product instructions (emulated_dot_products)."""
    return _EMULATED


@functools.cache
def register_intrinsic(isa: str = "vnni", emulated: bool = False) -> str:
    """The tensor intrinsic of one dot-product instruction: `lanes` int32 accumulators (in
    registers: local scope, as the kernel's tiles are), each += the dot product of the same 4
    activation bytes with its own 4 weight bytes. The implementation broadcasts the 4 bytes,
    read as one int32, to every lane and calls the LLVM intrinsic on whole vectors
    (`emulated`: the same sums as loops, runnable on any CPU)."""
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    if isa in PAIRED_WEIGHTS:
        return avx2.pairs_intrinsic(*DOT_INSTRUCTIONS[isa], emulated)
    name, a_dtype, lanes, llvm_name = DOT_INSTRUCTIONS[isa]
    a_x4, a_all, b_all, c_all = f"{a_dtype}x4", f"{a_dtype}x{4 * lanes}", f"int8x{4 * lanes}", f"int32x{lanes}"
    a_as, b_as = (c_all, c_all) if isa in WORD_OPERANDS else (a_all, b_all)   # the intrinsic's operand types

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
                T.reinterpret(T.broadcast(four, lanes), dtype=a_as), T.reinterpret(B.vload([0, 0], dtype=b_all), dtype=b_as),
                dtype=c_all)

    if isa == "avx2ub":
        impl = avx2.ub_impl(lanes)
    if emulated:
        name += "_emulated"
    # emulated: the description's own loops are the implementation
    TensorIntrin.register(name, desc, desc if emulated else impl, override=True)
    return name


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
    loops over channel blocks move outside the pixel loops for that.

    The pixel tile (output pixels per register tile) is the template's, unless a tuning
    database (backends/tvm/tuning.py) has a faster one for this kernel."""
    from qcompiler.backends.tvm import tuning

    return tuning.built_kernel(ConvTask(n, h, w, ci, co, kh, kw, stride, dilation, padding, requantize, weight_bits,
                                        isa, pad_value))


@dataclasses.dataclass(frozen=True)
class ConvTask(KernelGeometry):
    """One convolution kernel's shape and options: its compute (unscheduled) and its name."""

    n: int
    h: int
    w: int
    ci: int
    co: int
    kh: int
    kw: int
    stride: tuple
    dilation: tuple
    padding: tuple
    requantize: RequantizeCode | None = None
    weight_bits: int = 8
    isa: str = "vnni"
    pad_value: int = 0

    def macs(self) -> int:
        ho, wo = self.output_hw()
        return self.n * ho * wo * self.co * self.ci * self.kh * self.kw

    def schedule(self, sch, tile) -> None:
        schedule_conv(sch, self, tile)

    def template_tile(self) -> int:
        """AVX2 has 16 vector registers, not 32: 2 pixels (4 accumulators) measured fastest on
        3 of MobileNetV2's 4 shapes that allow 2 to 8 (Zen 2: 56x56x24->144 0.229 ms, 0.355
        with 8)."""
        if self.isa in SIXTEEN_REGISTERS:
            return pixel_tile(self.output_width(), (2, 7, 1))
        return super().template_tile()

    def name(self) -> str:
        name = (f"qconv2d_{self.isa}_{self.n}x{self.h}x{self.w}x{self.ci}_{self.co}x{self.kh}x{self.kw}"
                f"_s{self.stride[0]}d{self.dilation[0]}p{'_'.join(map(str, self.padding))}")
        if self.weight_bits < 8:
            name += f"_w{self.weight_bits}"
        if self.pad_value:
            name += f"_z{self.pad_value}"
        if self.requantize is not None:
            name += self.requantize.suffix
        return name

    def compute(self):
        """The unscheduled PrimFunc."""
        import tvm
        from tvm import te, topi

        n, h, w, ci, co, kh, kw = self.n, self.h, self.w, self.ci, self.co, self.kh, self.kw
        stride, dilation, padding, weight_bits = self.stride, self.dilation, self.padding, self.weight_bits
        cblock = channel_block(self.isa)
        if self.isa in PAIRED_WEIGHTS and weight_bits < 8:
            raise ValueError(f"{self.isa} kernels take 8-bit weights (4-bit grids use avx2ub)")
        x = te.placeholder((n, h, w, ci), "uint8", name="x")
        if weight_bits == 4:
            weights = [te.placeholder((co // cblock, kh, kw, ci // 4, 2 * cblock), "uint8", name="w4")]
            wp = unpacked_int4(tvm, te, weights[0], co, kh, kw, ci, cblock)
        elif weight_bits == 2:
            weights = [te.placeholder((co // cblock, kh, kw, ci // 4, cblock), "uint8", name="w2"),
                       te.placeholder((co,), "int8", name="w2_offsets")]
            wp = unpacked_int2(te, *weights, co, kh, kw, ci, cblock)
        elif self.isa in PAIRED_WEIGHTS:
            weights = [te.placeholder((co // cblock, kh, kw, ci // 4, 2, cblock, 2), "int8", name="w")]
            wp = weights[0]
        else:
            weights = [te.placeholder((co // cblock, kh, kw, ci // 4, cblock, 4), "int8", name="w")]
            wp = weights[0]
        padded = padded_input(topi, x, padding, self.pad_value)
        if self.isa == "sdot":   # u8 -> s8 (x - 128): sdot is signed only; the caller corrects by 128 * sum(w)
            padded = te.compute(padded.shape, lambda *i: (padded(*i).astype("int32") - 128).astype("int8"),
                                name="signed")
        ho, wo = output_size(h, w, kh, kw, stride, dilation, padding)
        ry, rx, rc = te.reduce_axis((0, kh), "ry"), te.reduce_axis((0, kw), "rx"), te.reduce_axis((0, ci), "rc")
        out = te.compute(
            (n, ho, wo, co),
            lambda b, y, xx, o: te.sum(
                padded[b, y * stride[0] + ry * dilation[0], xx * stride[1] + rx * dilation[1], rc].astype("int32")
                * self._weight(wp, o, ry, rx, rc).astype("int32"), axis=[ry, rx, rc]),
            name="conv")
        params = [x, *weights, out]
        if self.requantize is not None:
            requant, rq_inputs = requantized(tvm, te, out, co, self.requantize)
            params = [x, *weights, *rq_inputs, requant]
        return te.create_prim_func(params)


    def _weight(self, wp, o, ry, rx, rc):
        """The weight of output channel o, input channel rc at (ry, rx) in the packed layout."""
        cblock = channel_block(self.isa)
        if self.isa in PAIRED_WEIGHTS:
            return wp[o // cblock, ry, rx, rc // 4, rc % 4 // 2, o % cblock, rc % 2]
        return wp[o // cblock, ry, rx, rc // 4, o % cblock, rc % 4]


def schedule_conv(sch, task: ConvTask, tile) -> None:
    """The template schedule of a ConvTask's compute, `tile` output pixels per register tile
    (an int dividing the output width, or a sampled value while tuning)."""
    from qcompiler.backends.tvm.schedules import cpu_generic

    isa, weight_bits = task.isa, task.weight_bits
    packed = weight_bits < 8
    cblock = channel_block(isa)
    block = sch.get_sblock("conv")
    b, y, xx, o, r_y, r_x, r_c = sch.get_loops(block)
    if isa == "sdot":
        o_outer, o_block, o_inner = sch.split(o, [None, 4, 4])
    else:
        o_outer, o_inner = sch.split(o, [None, cblock])
        o_block = None
    c_outer, c_inner = sch.split(r_c, [None, 4])
    inner_loops = [o_inner, c_inner] if o_block is None else [o_block, o_inner, c_inner]
    steps = avx2.int16_steps(task.ci) if isa == "avx2ub" else 1
    if steps > 1:   # `steps` blocks of 4 input channels summed in int16 (avx2.ub_steps_intrinsic)
        c_outer, c_step = sch.split(c_outer, [None, steps])
        inner_loops = [c_step, *inner_loops]
    x_outer, x_inner = sch.split(xx, [None, tile])
    if packed:
        sch.reorder(b, o_outer, y, x_outer, r_y, r_x, c_outer, x_inner, *inner_loops)
        # The weights are unpacked per block of output channels, outside the rows: the threads
        # split those blocks (one launch a call), not each block's rows (a launch a block: 160 ->
        # 960 channels at 7x7 took 215 us instead of 61 on two threads, 121 instead of 110 on one).
        rows = [o_outer] if task.co > cblock else [y]
        tile_loop = x_outer
        unpack = sch.get_sblock("unpack")
        sch.compute_at(unpack, o_outer)
        parts = 8 // weight_bits   # fields per byte
        part, inner = sch.split(sch.fuse(*sch.get_loops(unpack)[-2:]), [parts, 4 * cblock // parts])
        sch.unroll(part)   # each part one vector: its shift is a constant, no per-lane select
        if not (isa == "vrmpy" and weight_bits == 2):
            sch.vectorize(inner)
    else:
        sch.reorder(b, y, x_outer, o_outer, r_y, r_x, c_outer, x_inner, *inner_loops)
        rows = [b, y]
        tile_loop = o_outer
    if isa not in SINGLE_THREADED:
        cpu_generic.parallel_rows(sch, rows, task.macs())
    write_back = sch.cache_write(block, 0, "local")
    sch.reverse_compute_at(write_back, tile_loop)
    init = sch.decompose_reduction(block, r_y)
    if steps > 1:
        sch.tensorize(c_step, avx2.ub_steps_intrinsic(steps, _EMULATED))
    else:
        sch.tensorize(o_inner, register_intrinsic(isa, _EMULATED))
    if o_block is not None:
        sch.unroll(o_block)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.unroll(x_inner)
    if task.requantize is not None:   # computed from the registers on the way out: no int32 round trip
        sch.reverse_compute_inline(sch.get_sblock("requantize"))
    sch.vectorize(sch.get_loops(write_back)[-1])
