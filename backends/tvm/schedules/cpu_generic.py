"""Schedule rules for the fused PrimFuncs that have no hand-written kernel (dlight rules, CPU).

TVM compiles an unscheduled PrimFunc as plain scalar loops. Two rules cover what remains of an
integer network once its convolutions use the VNNI kernel:

- `VectorizeInjective`: elementwise chains (the requantization after a kernel, residual adds,
  casts, pads, layout copies): inline them into one loop nest and vectorize it, by the target's
  `vector_lanes` (16 on every target today).
- `VectorizeChannels`: NHWC reductions whose innermost output axis is channels (depthwise
  convolutions, pooling): reduction loops moved outside the channel loop, which is vectorized;
  the requantization that follows is computed per row, also vectorized.
"""

from __future__ import annotations

import math

import tvm
from tvm import s_tir
from tvm.s_tir import dlight as dl

from qcompiler.backends.tvm.schedules.geometry import pixel_tile

LANES = 16


def _reads_across_layout(sch, block) -> bool:
    """Whether the block reads some input with its innermost axis in another index than the
    input's last: a layout change (NCHW -> NHWC), where vectorizing that axis gathers."""
    stmt = sch.get(block)
    axis = stmt.iter_vars[-1].var

    def uses_axis(expr) -> bool:
        return any(var.same_as(axis) for var in tvm.tirx.analysis.undefined_vars(expr))

    reads = [read for read in stmt.reads if len(read.region)]   # scalars (0-d buffers) have no axes
    return any(uses_axis(r.min) for read in reads for r in list(read.region)[:-1]) and \
        not any(uses_axis(read.region[-1].min) for read in reads)


def vectorize_innermost(sch, block, lanes: int = LANES) -> None:
    """Vectorize the innermost loop (NHWC: channels, so per-channel constants load contiguously)
    in whole vectors: `lanes`, or their largest common divisor with its extent (24 channels: 3
    vectors of 8). Fusing the loops instead, for one long vector loop, made a gather of every
    vector whose lanes cross a row (the index is a div/mod of the fused one): a residual add
    over 56x56x24 ran 6x slower per element than one over 28x28x32 (1.9 against 0.25 ns;
    8 lanes along the channels: 0.32). Loops are fused only where the innermost extent is not
    static. The network input's NCHW -> NHWC copy with few channels vectorizes the pixels
    instead, so that each channel plane is read in whole vectors."""
    loops = sch.get_loops(block)
    extent = _static(sch.get(loops[-1]).extent)
    if len(loops) > 1 and extent is not None and extent <= 4 and _reads_across_layout(sch, block):
        outer, inner = sch.split(loops[-2], [None, lanes])
        sch.reorder(outer, loops[-1], inner)
        sch.unroll(loops[-1])
        sch.vectorize(inner)
        return
    if extent is None:
        fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
        lanes = whole_vectors(_static(sch.get(fused).extent), lanes)
        _, inner = sch.split(fused, [None, lanes])
    else:
        lanes = whole_vectors(extent, lanes) if len(loops) == 1 else math.gcd(extent, lanes)
        _, inner = sch.split(loops[-1], [None, lanes])
    sch.vectorize(inner)


def whole_vectors(extent: int | None, lanes: int) -> int:
    """Lanes per vector for a loop of `extent`: `lanes` when they divide it, else their largest
    common divisor (12 channels: 3 vectors of 4), so that no vector has a masked tail: the
    masked tail of a 12-channel depthwise convolution computed wrong values in the Hexagon
    code LLVM made for it. An extent with no common divisor is one short vector when it is
    shorter than `lanes` (7 channels: 7 lanes), else keeps the masked tail (the CPU targets
    compute it right; no test has such a layer on Hexagon)."""
    if extent is None or extent % lanes == 0:
        return lanes
    common = math.gcd(extent, lanes)
    if common > 1:
        return common
    return extent if extent < lanes else lanes


def _looks_up(sch, block) -> bool:
    """Whether the block reads some buffer at an index loaded from another (a lookup table)."""
    stmt = sch.get(block)
    loop_vars = {v.var for v in stmt.iter_vars}
    # an index that uses anything but the block's own axes (a buffer's data) loads from it
    return any(not any(var.same_as(own) for own in loop_vars)
               for read in stmt.reads for r in read.region for var in tvm.tirx.analysis.undefined_vars(r.min))


def _static(extent) -> int | None:
    return int(extent) if isinstance(extent, int | tvm.tirx.IntImm) else None


class VectorizeInjective(dl.ScheduleRule):
    def __init__(self, lanes: int = LANES):
        self.lanes = lanes

    def apply(self, func, target, _):
        sch = s_tir.Schedule(func)
        blocks = dl.normalize_prim_func(sch)
        if blocks is None or any(sch.get(b.block_rv).init is not None for b in blocks):
            # A reduction over one element (a 1x1 depthwise conv, a Conv 1->N 1x1, AveragePool
            # 1x1, MatMul with K = 1) looks injective here, and try_inline then folds the
            # epilogue into it while it keeps its init: the epilogue ran twice (found by
            # benchmarks/fuzz.py: 2-139 LSB). Reductions are left to VectorizeChannels.
            return None
        blocks = dl.try_inline(sch, blocks)
        if not blocks or not all(b.is_injective() for b in blocks):
            return None
        # Several blocks are left where the chain ends in more than one output (a Split):
        # each is a loop nest of its own. Unscheduled, such a kernel kept every stage as a
        # buffer of int64 (ShuffleNet's channel shuffle), which LLVM's Hexagon backend took
        # minutes to compile.
        for block in blocks:
            if target.kind.name == "hexagon" and _looks_up(sch, block.block_rv):
                continue   # scalar loops: TVM's Hexagon codegen emits invalid IR for a vectorized table lookup
            vectorize_innermost(sch, block.block_rv, self.lanes)
        return sch


#: Kernels with fewer multiply-adds stay on one thread: waking a second thread costs more than
#: it saves (measured: the Fashion-MNIST nets, whose kernels are all below this, ran 4-10%
#: slower on 2 threads with every kernel split).
MIN_PARALLEL_MACS = 1 << 20
#: The same for depthwise kernels, which take several times as long per multiply-add (no channel
#: reduction feeds their products): MobileNetV2's 14x14x384 3x3 one, 677K multiply-adds, took 20 us
#: on one Zen 4 core, as long as a dense kernel of 4M, and ran on one thread below 2^20.
MIN_PARALLEL_DEPTHWISE_MACS = 1 << 17


def parallel_rows(sch, outer: list, macs: int | None, least: int = MIN_PARALLEL_MACS) -> None:
    """Split the kernel's work over the runtime's threads by output rows: `outer` are the loops
    above the row tiles (batch, rows), fused into one parallel loop, for a kernel of `macs`
    multiply-adds (None: unknown, split) of at least `least`. Rows are independent, so the
    results are the same bits whatever the thread count; with one thread (TVM_NUM_THREADS=1)
    the launch runs the loop on the calling thread."""
    if outer and (macs is None or macs >= least):
        sch.parallel(sch.fuse(*outer) if len(outer) > 1 else outer[0])


def _work(sch, loops) -> int | None:
    """The product of the loops' extents (None if one is not static)."""
    extents = [_static(sch.get(loop).extent) for loop in loops]
    return None if None in extents else math.prod(extents)


def threaded(target) -> bool:
    """Whether kernels for `target` split their rows over threads: not on Hexagon, whose C
    driver runs every kernel on one thread (and whose row split needs a division routine the
    freestanding test binary lacks)."""
    return target is None or target.kind.name != "hexagon"


def tile_pixels_and_channels(sch, block, spatial: list, reduce: list, epilogue=None, lanes: int = LANES,
                             tile=None, parallel: bool = True, least: int = MIN_PARALLEL_MACS) -> None:
    """Schedule an NHWC reduction block (`spatial` loops ending in pixels, channels): 16
    channels per vector, the reduction loops outside a tile of pixels along the row that shares
    each weight vector: tile x 16 accumulators in registers (a local cache), written back once
    per tile; the `epilogue` block (a requantization) computed from the registers on the way
    out (no int32 round trip). Channels that are not a multiple of `lanes` are vectorized as
    `whole_vectors` says. `parallel`: output rows over the thread pool (parallel_rows, from
    `least` multiply-adds)."""
    work = _work(sch, [*spatial, *reduce])
    lanes = whole_vectors(_static(sch.get(spatial[-1]).extent), lanes)
    channel_outer, channel_inner = sch.split(spatial[-1], [None, lanes])
    width = sch.get(spatial[-2]).extent
    if tile is None:   # the template's (a tuned kernel passes its own: backends/tvm/tuning.py)
        tile = pixel_tile(int(width)) if hasattr(width, "value") or isinstance(width, int) else 1
    pixel_outer, pixel_inner = sch.split(spatial[-2], [None, tile])
    sch.reorder(*spatial[:-2], pixel_outer, channel_outer, *reduce, pixel_inner, channel_inner)
    if parallel:
        parallel_rows(sch, list(spatial[:-2]), work, least)
    write_back = sch.cache_write(block, 0, "local")
    sch.reverse_compute_at(write_back, channel_outer)
    sch.vectorize(channel_inner)
    sch.unroll(pixel_inner)
    init = sch.decompose_reduction(block, reduce[0])
    sch.vectorize(sch.get_loops(init)[-1])
    sch.vectorize(sch.get_loops(write_back)[-1])
    if epilogue is not None:
        try:
            sch.reverse_compute_inline(epilogue)
        except (s_tir.ScheduleError, tvm.error.InternalError):
            # An epilogue that is not a pointwise map of the accumulator (a slice of padded
            # channels: a 12-channel grouped conv on the smmla target; InstanceNormalization's
            # float epilogue, where TVM's own check fails instead of reporting) stays a loop of
            # its own, after the tile: correct, one round trip more.
            pass


class VectorizeChannels(dl.ScheduleRule):
    def __init__(self, lanes: int = LANES):
        self.lanes = lanes

    def apply(self, func, target, _):
        sch = s_tir.Schedule(func)
        blocks = dl.normalize_prim_func(sch)
        if blocks is None:
            return None
        blocks = dl.try_inline_contiguous_spatial(sch, blocks)
        reductions = [b for b in blocks if not b.is_injective()]
        if len(reductions) != 1 or len(blocks) > 2:
            return None
        main = reductions[0]
        kinds = main.dom_kind()
        if not kinds.endswith("R") or "S" not in kinds:
            return None
        epilogue = [b for b in blocks if b is not main]
        loops = sch.get_loops(main.block_rv)
        spatial = [loop for loop, kind in zip(loops, kinds) if kind == "S"]
        reduce = [loop for loop, kind in zip(loops, kinds) if kind == "R"]
        if len(spatial) < 2:
            return None
        tile_pixels_and_channels(sch, main.block_rv, spatial, reduce, epilogue[0].block_rv if epilogue else None,
                                 self.lanes, parallel=threaded(target))
        return sch


def apply_cpu_rules(mod, target, lanes: int = LANES):
    """Fuse the legalized module's ops and schedule every PrimFunc the rules recognise."""
    from tvm import relax

    mod = relax.transform.LegalizeOps()(mod)
    mod = relax.transform.AnnotateTIROpPattern()(mod)
    mod = relax.transform.FuseOps()(mod)
    mod = relax.transform.FuseTIR()(mod)
    with target:
        mod = dl.ApplyDefaultSchedule(VectorizeInjective(lanes), VectorizeChannels(lanes))(mod)
    return mod
