"""Depthwise convolution kernel (NHWC, int8 weights [KH, KW, C]) with the requantization fused,
its per-channel parameters int32 like the dot-product kernels'.

Without it, a depthwise convolution keeps TVM's compute and the integer rewrite's int64
requantization constants (multiplier, rounding half, shift per channel: 24 bytes a channel,
MobileNetV2 has 7,000 depthwise channels). Here the multiplier and correction are int32 kernel
inputs and the shift one number per layer. The schedule is cpu_generic.VectorizeChannels:
16 channels per vector, a tile of pixels in registers, the requantization on the way out.
"""

from __future__ import annotations

import functools

from qcompiler.backends.tvm.schedules.int8_conv import RequantizeCode, output_size, padded_input, requantized


def applies(channels: int) -> bool:
    return channels % 16 == 0


@functools.cache
def depthwise_kernel(n: int, h: int, w: int, c: int, kh: int, kw: int, stride: tuple, dilation: tuple,
                     padding: tuple, requantize: RequantizeCode):
    """The scheduled PrimFunc: x u8 NHWC, weight s8 [KH, KW, C], corr s32[C], m s32[C],
    Requantize.values s32[4] -> requantized NHWC. Padding is zero (the graph pads with a
    non-zero zero point itself)."""
    import tvm
    from tvm import te, topi

    from qcompiler.backends.tvm.schedules.cpu_generic import VectorizeChannels

    x = te.placeholder((n, h, w, c), "uint8", name="x")
    weight = te.placeholder((kh, kw, c), "int8", name="w")
    padded = padded_input(topi, x, padding)
    ho, wo = output_size(h, w, kh, kw, stride, dilation, padding)
    ry, rx = te.reduce_axis((0, kh), "ry"), te.reduce_axis((0, kw), "rx")
    acc = te.compute(
        (n, ho, wo, c),
        lambda b, y, xx, o: te.sum(
            padded[b, y * stride[0] + ry * dilation[0], xx * stride[1] + rx * dilation[1], o].astype("int32")
            * weight[ry, rx, o].astype("int32"), axis=[ry, rx]),
        name="depthwise")
    out, rq_inputs = requantized(tvm, te, acc, c, requantize)
    func = te.create_prim_func([x, weight, *rq_inputs, out])
    sch = VectorizeChannels().apply(func, None, False)
    if sch is None:
        raise RuntimeError("depthwise kernel: the channel schedule did not apply")   # a bug, not bad input
    name = (f"qdepthwise_{n}x{h}x{w}x{c}_{kh}x{kw}_s{stride[0]}d{dilation[0]}p{'_'.join(map(str, padding))}"
            + requantize.suffix)
    # Opaque (op_pattern 8): TVM must not fuse a scheduled kernel with its neighbours.
    return sch.mod["main"].with_attrs({"global_symbol": name, "tirx.is_scheduled": True, "op_pattern": 8})
