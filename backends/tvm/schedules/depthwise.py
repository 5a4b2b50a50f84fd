"""Depthwise convolution kernel (NHWC, int8 weights [KH, KW, C]) with the requantization fused,
its per-channel parameters int32 like the dot-product kernels'.

Without it, a depthwise convolution keeps TVM's compute and the integer rewrite's int64
requantization constants (multiplier, rounding half, shift per channel: 24 bytes a channel,
MobileNetV2 has 7,000 depthwise channels). Here the multiplier and correction are int32 kernel
inputs and the shift one number per layer. The schedule is cpu_generic's
tile_pixels_and_channels: 16 channels per vector, a tile of pixels in registers, the
requantization on the way out. Weights on a 4-bit grid come two to a byte.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from qcompiler.backends.tvm.schedules.geometry import KernelGeometry, output_size, padded_input, pixel_tile
from qcompiler.backends.tvm.schedules.requantize import RequantizeCode, requantized


#: The template's pixel tiles, in order of preference, on a CPU with 16 vector registers.
SIXTEEN_REGISTER_TILES = (2, 1)
#: The VNNI kernel's (depthwise_vnni.py): 4 pixels where they divide the row, else 2 (7 costs
#: 1.3 KiB more code on a 14-wide row): 0.5 KiB less code a kernel than the 32-register order
#: (8, 7, ...), whose tiles summed 0.5% faster over MobileNetV2's ten kernels on Zen 4
#: (benchmarks/results/depthwise_tiles_vnni.md); it keeps MobileNetV2's library within its size
#: target.
VNNI_TILES = (4, 2, 7, 1)


def applies(channels: int) -> bool:
    return channels % 16 == 0


def pack_weight_int4(weight_hwc: np.ndarray) -> np.ndarray:
    """[KH, KW, C] weights in [-8, 7] two to a byte: [KH, KW, 16 * ceil(C / 32)] uint8, the
    channels in pairs of 16-blocks: byte 16p + j holds channel 32p + j (low nibble) and
    32p + 16 + j (high nibble; zero past C)."""
    kh, kw, c = weight_hwc.shape
    blocks = np.zeros((kh, kw, -(-c // 32) * 2, 16), np.int16)
    blocks.reshape(kh, kw, -1)[:, :, :c] = weight_hwc
    nibbles = blocks.reshape(kh, kw, -1, 2, 16) & 0xF
    return (nibbles[..., 0, :] | (nibbles[..., 1, :] << 4)).reshape(kh, kw, -1).astype(np.uint8)


def _unpacked_int4(tvm, te, packed, kh: int, kw: int, pairs: int):
    """[KH, KW, 32 * pairs] int8 decoded from pack_weight_int4's nibbles (shifts in int8)."""
    four = tvm.tirx.const(4, "int8")

    def decode(r, s, o):
        byte = packed[r, s, (o // 32) * 16 + o % 16].astype("int8")
        up = (4 - 4 * ((o // 16) % 2)).astype("int8")   # 4 for the low nibble, 0 for the high one
        return (byte << up) >> four

    return te.compute((kh, kw, 32 * pairs), decode, name="unpack")


@functools.cache
def depthwise_kernel(n: int, h: int, w: int, c: int, kh: int, kw: int, stride: tuple, dilation: tuple,
                     padding: tuple, requantize: RequantizeCode, int4: bool = False, parallel: bool = True,
                     sixteen_registers: bool = False, vnni: bool = False):
    """The scheduled PrimFunc: x u8 NHWC, weight s8 [KH, KW, C] (`int4`: pack_weight_int4's
    uint8), requantize_table s32[2C + 4] (requantize.requantize_table) -> requantized NHWC.
    Padding is zero (the graph pads with a non-zero zero point itself). 4-bit weights are
    decoded once a call into a buffer of int8 ones by a vectorized loop (the W4A8
    MobileNetV2-style library grew by 4 KiB), which the int8 kernel's loops then read: decoded
    where they were used (a byte shift per weight vector per pixel tile, which x86 emulates)
    they took 1.8x the int8 kernel's time on AVX2.
    The pixel tile is the template's unless a tuning database has a faster one; `parallel`:
    output rows over the thread pool (not for Hexagon: cpu_generic.threaded); `sixteen_registers`:
    a CPU with 16 vector registers (AVX2), which takes a smaller template tile; `vnni`: the
    AVX-512 VNNI kernel (depthwise_vnni.py), four kernel rows per instruction."""
    from qcompiler.backends.tvm import tuning

    return tuning.built_kernel(DepthwiseTask(n, h, w, c, kh, kw, stride, dilation, padding, requantize, int4,
                                             parallel, sixteen_registers, vnni))


@dataclasses.dataclass(frozen=True)
class DepthwiseTask(KernelGeometry):
    """One depthwise kernel's shape and options: its compute, its schedule and its name."""

    n: int
    h: int
    w: int
    c: int
    kh: int
    kw: int
    stride: tuple
    dilation: tuple
    padding: tuple
    requantize: RequantizeCode
    int4: bool = False
    parallel: bool = True
    sixteen_registers: bool = False
    vnni: bool = False

    def macs(self) -> int:
        ho, wo = self.output_hw()
        return self.n * ho * wo * self.c * self.kh * self.kw

    def template_tile(self) -> int:
        """A pixel holds 16 int32 accumulators: two of AVX2's 16 vector registers, so 8 pixels
        spill there; SIXTEEN_REGISTER_TILES measured fastest on Zen 2 (benchmarks/depthwise_tiles.py)."""
        if self.sixteen_registers:
            return pixel_tile(self.output_width(), SIXTEEN_REGISTER_TILES)
        if self.vnni:
            return pixel_tile(self.output_width(), VNNI_TILES)
        return super().template_tile()

    def name(self) -> str:
        return (f"qdepthwise_{self.n}x{self.h}x{self.w}x{self.c}_{self.kh}x{self.kw}_s{self.stride[0]}"
                f"d{self.dilation[0]}p{'_'.join(map(str, self.padding))}" + ("_w4" if self.int4 else "")
                + ("_r16" if self.sixteen_registers else "") + ("_vnni" if self.vnni else "") + self.requantize.suffix)

    def written_kernel(self, tile):
        """The VNNI kernel, written as TIR (KernelGeometry.written_kernel)."""
        if not self.vnni:
            return None
        from qcompiler.backends.tvm.schedules import depthwise_vnni, int8_conv

        return depthwise_vnni.columns_kernel(self, tile, emulated=int8_conv.emulating())

    def compute(self):
        import tvm
        from tvm import te, topi

        n, h, w, c, kh, kw = self.n, self.h, self.w, self.c, self.kh, self.kw
        stride, dilation = self.stride, self.dilation
        x = te.placeholder((n, h, w, c), "uint8", name="x")
        if self.int4:
            weight = te.placeholder((kh, kw, -(-c // 32) * 16), "uint8", name="w4")
            unpacked = _unpacked_int4(tvm, te, weight, kh, kw, -(-c // 32))
        else:
            weight = unpacked = te.placeholder((kh, kw, c), "int8", name="w")
        padded = padded_input(topi, x, self.padding)
        ho, wo = output_size(h, w, kh, kw, stride, dilation, self.padding)
        ry, rx = te.reduce_axis((0, kh), "ry"), te.reduce_axis((0, kw), "rx")
        acc = te.compute(
            (n, ho, wo, c),
            lambda b, y, xx, o: te.sum(
                padded[b, y * stride[0] + ry * dilation[0], xx * stride[1] + rx * dilation[1], o].astype("int32")
                * unpacked[ry, rx, o].astype("int32"), axis=[ry, rx]),
            name="depthwise")
        out, rq_inputs = requantized(tvm, te, acc, c, self.requantize)
        return te.create_prim_func([x, weight, *rq_inputs, out])

    def schedule(self, sch, tile) -> None:
        """cpu_generic.tile_pixels_and_channels with `tile` output pixels per register tile."""
        from qcompiler.backends.tvm.schedules.cpu_generic import MIN_PARALLEL_DEPTHWISE_MACS, tile_pixels_and_channels

        if any(self.padding):
            sch.compute_inline(sch.get_sblock("padded"))
        if self.int4:   # decoded once a call, 16 channels a vector, before the tiles that read them
            unpack = sch.get_sblock("unpack")
            *_, lanes = sch.split(sch.get_loops(unpack)[-1], [None, 2, 16])
            sch.vectorize(lanes)
        block = sch.get_sblock("depthwise")
        loops = sch.get_loops(block)
        tile_pixels_and_channels(sch, block, loops[:4], loops[4:], sch.get_sblock("requantize"), tile=tile,
                                 parallel=self.parallel, least=MIN_PARALLEL_DEPTHWISE_MACS)
