"""The depthwise convolution on AVX-512 VNNI: four kernel rows per `vpdpbusd`.

A depthwise convolution has no reduction over channels, so the conv kernels' trick (one
activation broadcast to 16 output channels) does not apply: each product is one channel's own.
TVM's generic schedule (depthwise.py) widens every activation to int32 and does one multiply
per tap. Here each int32 lane holds, for one channel, the activations of up to four kernel rows
of one input column, one byte each (a "column"); `vpdpbusd` multiplies those four u8 bytes by
the four s8 weights of the same rows and adds them into the channel's int32 accumulator: a 3x3
kernel takes 3 instructions per 16 outputs (one per kernel column) instead of 9.

The columns of one output row are built once into a buffer and shared by the output pixels
that use them. The next output row's columns are the previous ones shifted down `stride` bytes
plus the new rows' bytes, so with stride 1 a row costs one zero-extension per column instead of
three (stride 2: two). Rows go in chunks (over the thread pool when the kernel is large); a
chunk's first row is rolled in the same way from the rows above it (three rolls for a 3x3
kernel), so there is one code path: the code is one kernel per shape, and MobileNetV2's library
has a size target. Dilated kernels and those of more than four rows build each row in full. The
requantization is the other kernels' (requantize.requantize_expression), computed from the
accumulator registers.

The weights stay [KH, KW, C] int8, as depthwise.py stores them (packed in blocks they would
grow by a third, the zero fourth row of a 3x3 kernel). The kernel interleaves each channel
block's weights the way the columns are (byte 4j + k: channel j's weight at kernel row 4g + k,
zero past KH) into registers before the pixels that use them. Products are exact (u8 x s8 in
int32), so the kernel computes the same bits as depthwise.py's.

Some loops take a trip count LLVM cannot see (min(n, n + shift), the requantization shift being at
least 1: fixed_point.multiplier_and_shift), so
that it keeps them rolled: fully unrolled over up to 60 channel blocks they cost up to 6 KiB of
code per kernel.
"""

from __future__ import annotations

from qcompiler.backends.tvm.schedules.geometry import output_size
from qcompiler.backends.tvm.schedules.requantize import requantize_expression

LANES = 16
#: Row chunks of a kernel split over threads: 8 balance 1, 2 and 4 threads. A chunk's first row
#: builds its columns from all KH input rows (the others roll them down), which costs a thread
#: that runs several chunks: the kernels below MIN_PARALLEL_MACS (whose rows are few: 14 or 7 in
#: MobileNetV2) make 2 chunks; in 8 of 2 rows they ran 15-30% slower on one thread, in 4 of 4 rows
#: 5-13%.
THREAD_CHUNKS = 8
SMALL_KERNEL_CHUNKS = 2


def columns_kernel(task, tile: int, emulated: bool = False):
    """The PrimFunc of a DepthwiseTask with `tile` output pixels per register tile: x u8 NHWC,
    weights s8 [KH, KW, C] (task.int4: depthwise.pack_weight_int4's nibbles), requantize_table
    s32[2C + 4] -> NHWC output.
    `emulated`: the dot products as plain vector arithmetic (any x86 CPU; for tests)."""
    import tvm
    from tvm import tirx
    from tvm.script import tirx as T

    from qcompiler.backends.tvm.schedules.cpu_generic import MIN_PARALLEL_DEPTHWISE_MACS, MIN_PARALLEL_MACS

    n, h, w, c, kh, kw = task.n, task.h, task.w, task.c, task.kh, task.kw
    (s0, s1), (d0, d1), (pt, pl, pb, pr) = task.stride, task.dilation, task.padding
    ho, wo = output_size(h, w, kh, kw, task.stride, task.dilation, task.padding)
    assert c % LANES == 0 and wo % tile == 0, (c, wo, tile)
    nb, groups, wp = c // LANES, -(-kh // 4), w + pl + pr
    rolling = d0 == 1 and groups == 1 and s0 <= min(kh, 3)
    rolls = -(-kh // s0)
    rows = n * ho
    threads = task.parallel and task.macs() >= MIN_PARALLEL_DEPTHWISE_MACS
    split = THREAD_CHUNKS if task.macs() >= MIN_PARALLEL_MACS else SMALL_KERNEL_CHUNKS
    chunk = -(-rows // split) if threads else rows
    chunks = -(-rows // chunk)
    zero16 = tirx.Broadcast(tirx.const(0, "uint32"), LANES)

    def at_byte(value, k):
        """uint32 lanes holding a byte each, moved to byte k."""
        return value << tirx.Broadcast(tirx.const(8 * k, "uint32"), LANES) if k else value

    def interleaved(row_part, g):
        """Kernel rows 4g..4g+3 one byte each per lane, `row_part(k)` giving row 4g + k's in the
        low byte; zero past KH (rows past it carry zero weights; the activations are kept zero
        too)."""
        total = None
        for k in range(4):
            if groups == 1 and k >= kh:
                break
            part = row_part(k)
            if groups > 1:
                part = tirx.Select(4 * g + k < kh, part, zero16)
            total = at_byte(part, k) if total is None else total | at_byte(part, k)
        return total

    def row_bytes(x, b, r, xc, cb):
        """Input row r's 16 channels at column xc, zero-extended to uint32 lanes; zero where r is
        padding (the load itself from a row clamped into the input)."""
        clamped = tirx.max(tirx.min(r, h - 1), 0)
        load = tirx.BufferLoad(x, [b, clamped, xc, tirx.Ramp(cb * LANES, 1, LANES)]).astype(f"uint32x{LANES}")
        # an AND with a mask, not a select: LLVM unswitches loops on selects by invariant
        # conditions, a copy of the loop for each combination of the rows' validity (code size)
        keep = tirx.Select(tirx.all(0 <= r, r < h), tirx.const(0xFFFFFFFF, "uint32"), tirx.const(0, "uint32"))
        return load & tirx.Broadcast(keep, LANES)

    def full_column(x, b, y, xc, g, cb):
        """Output row y's column of kernel rows 4g..4g+3, every row loaded."""
        return interleaved(lambda k: row_bytes(x, b, y * s0 + (4 * g + k) * d0 - pt, xc, cb), g)

    def weight_row(wt, row, s, cb):
        """One kernel row's 16 s8 weights at column s, each in the low byte of a uint32 lane (a
        4-bit grid's nibbles, depthwise.pack_weight_int4, decoded to that byte)."""
        if not task.int4:
            load = tirx.reinterpret(f"uint8x{LANES}", tirx.BufferLoad(wt, [row, s, tirx.Ramp(cb * LANES, 1, LANES)]))
            return load.astype(f"uint32x{LANES}")
        byte = tirx.BufferLoad(wt, [row, s, tirx.Ramp((cb // 2) * LANES, 1, LANES)]).astype(f"int32x{LANES}")
        up = tirx.Broadcast(24 + 4 * (1 - cb % 2), LANES)   # the low nibble of even blocks, the high of odd
        value = (byte << up) >> tirx.Broadcast(tirx.const(28, "int32"), LANES)
        return tirx.reinterpret(f"uint32x{LANES}", value & tirx.Broadcast(tirx.const(255, "int32"), LANES))

    def weight_block(wt, g, s, cb):
        """The weights of kernel rows 4g..4g+3 at column s, interleaved like the columns."""
        return interleaved(lambda k: weight_row(wt, tirx.min(4 * g + k, kh - 1), s, cb), g)

    def rolled_column(x, col, b, y, xc, cb):
        """Output row y's column from the previous row's: s0 bytes down, the new rows above."""
        total = (col[pl + xc, 0, cb, tirx.Ramp(0, 1, LANES)] >> tirx.Broadcast(tirx.const(8 * s0, "uint32"), LANES)) \
            & tirx.Broadcast(tirx.const((1 << 8 * (kh - s0)) - 1, "uint32"), LANES)   # no bytes past KH
        for k in range(kh - s0, kh):
            total = total | at_byte(row_bytes(x, b, y * s0 + k - pt, xc, cb), k)
        return total

    def dot(acc, columns, weights):
        if not emulated:
            return tirx.call_llvm_pure_intrin(f"int32x{LANES}", "llvm.x86.avx512.vpdpbusd.512", acc,
                                              tirx.reinterpret(f"uint8x{4 * LANES}", columns),
                                              tirx.reinterpret(f"int8x{4 * LANES}", weights))
        a = tirx.reinterpret(f"int32x{LANES}", columns)
        wv = tirx.reinterpret(f"int32x{LANES}", weights)   # each byte's sign from the shifts below

        def lanes(v):
            return tirx.Broadcast(tirx.const(v, "int32"), LANES)

        for k in range(4):
            acc = acc + ((a >> lanes(8 * k)) & lanes(255)) * ((wv << lanes(24 - 8 * k)) >> lanes(24))
        return acc

    def output(table, acc, t, b, y, px, cb):
        read = lambda *_: acc[t, tirx.Ramp(0, 1, LANES)]   # noqa: E731
        return requantize_expression(tvm, task.requantize, read, table, c)(b, y, px, tirx.Ramp(cb * LANES, 1, LANES))

    rq_len, out_dtype = 2 * c + 4, task.requantize.dtype
    weight_shape, weight_dtype = ((kh, kw, -(-c // 32) * 16), "uint8") if task.int4 else ((kh, kw, c), "int8")

    @T.prim_func
    def kernel(x: T.Buffer((n, h, w, c), "uint8"), weight: T.Buffer(weight_shape, weight_dtype),
               requantize_table: T.Buffer((rq_len,), "int32"), out: T.Buffer((n, ho, wo, c), out_dtype)):
        T.func_attr({"tirx.noalias": True})
        shift = requantize_table[2 * c + 3]
        for part in T.parallel(chunks) if threads else T.serial(chunks):
            col = T.decl_buffer((wp, groups, nb, LANES), "uint32")
            acc = T.decl_buffer((tile, LANES), "int32", scope="local")
            wk = T.decl_buffer((groups, kw, LANES), "uint32", scope="local")
            for cx, g, cb in T.grid(pl, groups, T.min(nb, nb + shift)):   # the padding columns
                col[cx, g, cb, T.ramp(0, 1, LANES)] = T.broadcast(T.uint32(0), LANES)
            for cx, g, cb in T.grid(pr, groups, T.min(nb, nb + shift)):
                col[pl + w + cx, g, cb, T.ramp(0, 1, LANES)] = T.broadcast(T.uint32(0), LANES)
            for i in range(T.min(chunk, rows - part * chunk)):
                b = (part * chunk + i) // ho
                y = (part * chunk + i) % ho
                # one loop over the row's (column, block) pairs (nested, LLVM unrolled the columns)
                # a chunk's or an image's first row: `rolls` rolls, from the rows above (the test is
                # spelled twice: bound to a variable, it cost 0.8 KiB more code over MobileNetV2's)
                if rolling:
                    for v in range(T.if_then_else(tirx.any(i == 0, y == 0), rolls, 1)):
                        for q in range(T.min(w * nb, w * nb + shift)):
                            col[pl + q // nb, 0, q % nb, T.ramp(0, 1, LANES)] = rolled_column(
                                x, col, b, y - T.if_then_else(tirx.any(i == 0, y == 0), rolls - 1, 0) + v, q // nb, q % nb)
                else:
                    for g, q in T.grid(groups, T.min(w * nb, w * nb + shift)):
                        col[pl + q // nb, g, q % nb, T.ramp(0, 1, LANES)] = full_column(x, b, y, q // nb, g, q % nb)
                for cb in range(nb):
                    for g, s in T.grid(groups, kw):   # this block's weights, interleaved in registers
                        wk[g, s, T.ramp(0, 1, LANES)] = weight_block(weight, g, s, cb)
                    for xo in range(wo // tile):
                        for t in T.unroll(tile):
                            acc[t, T.ramp(0, 1, LANES)] = T.broadcast(0, LANES)
                        for g, s in T.grid(groups, kw):
                            for t in T.unroll(tile):
                                acc[t, T.ramp(0, 1, LANES)] = dot(acc[t, T.ramp(0, 1, LANES)],
                                                                  col[(xo * tile + t) * s1 + s * d1, g, cb, T.ramp(0, 1, LANES)],
                                                                  wk[g, s, T.ramp(0, 1, LANES)])
                        for t in T.unroll(tile):
                            out[b, y, xo * tile + t, T.ramp(cb * LANES, 1, LANES)] = output(
                                requantize_table, acc, t, b, y, xo * tile + t, cb)

    return kernel
