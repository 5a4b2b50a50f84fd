"""Schedule rules for the fused PrimFuncs that have no hand-written kernel (dlight rules, CPU).

TVM compiles an unscheduled PrimFunc as plain scalar loops. Two rules cover what remains of an
integer network once its convolutions use the VNNI kernel:

- `VectorizeInjective`: elementwise chains (the requantization after a kernel, residual adds,
  casts, pads, layout copies): inline them into one loop nest and vectorize it, 16 lanes.
- `VectorizeChannels`: NHWC reductions whose innermost output axis is channels (depthwise
  convolutions, pooling): reduction loops moved outside the channel loop, which is vectorized;
  the requantization that follows is computed per row, also vectorized.
"""

from __future__ import annotations

from tvm import s_tir
from tvm.s_tir import dlight as dl

from qcompiler.backends.tvm.schedules.int8_conv import pixel_tile

LANES = 16


def _vectorize_innermost(sch, block, lanes: int = LANES) -> None:
    """Vectorize the innermost loop (NHWC: channels, so per-channel constants load contiguously)
    when it holds whole vectors; otherwise all loops fused, then vectorized."""
    loops = sch.get_loops(block)
    extent = sch.get(loops[-1]).extent
    if len(loops) == 1 or not (isinstance(extent, int) or hasattr(extent, "value")) or int(extent) % lanes:
        fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
        _, inner = sch.split(fused, [None, lanes])
    else:
        _, inner = sch.split(loops[-1], [None, lanes])
    sch.vectorize(inner)


class VectorizeInjective(dl.ScheduleRule):
    def apply(self, func, target, _):
        sch = s_tir.Schedule(func)
        blocks = dl.normalize_prim_func(sch)
        if blocks is None:
            return None
        blocks = dl.try_inline(sch, blocks)
        if len(blocks) != 1 or not blocks[0].is_injective():
            return None
        _vectorize_innermost(sch, blocks[0].block_rv)
        return sch


class VectorizeChannels(dl.ScheduleRule):
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
        channel_outer, channel_inner = sch.split(spatial[-1], [None, LANES])
        # A tile of pixels along the row shares each weight vector: tile x 16 accumulators in
        # registers (a local cache), written back once per tile.
        width = sch.get(spatial[-2]).extent
        tile = pixel_tile(int(width)) if hasattr(width, "value") or isinstance(width, int) else 1
        pixel_outer, pixel_inner = sch.split(spatial[-2], [None, tile])
        sch.reorder(*spatial[:-2], pixel_outer, channel_outer, *reduce, pixel_inner, channel_inner)
        write_back = sch.cache_write(main.block_rv, 0, "local")
        sch.reverse_compute_at(write_back, channel_outer)
        sch.vectorize(channel_inner)
        sch.unroll(pixel_inner)
        init = sch.decompose_reduction(main.block_rv, reduce[0])
        sch.vectorize(sch.get_loops(init)[-1])
        sch.vectorize(sch.get_loops(write_back)[-1])
        if epilogue:
            sch.reverse_compute_at(epilogue[0].block_rv, channel_outer)
            sch.vectorize(sch.get_loops(epilogue[0].block_rv)[-1])
        return sch


def apply_cpu_rules(mod, target):
    """Fuse the legalized module's ops and schedule every PrimFunc the rules recognise."""
    from tvm import relax

    mod = relax.transform.LegalizeOps()(mod)
    mod = relax.transform.AnnotateTIROpPattern()(mod)
    mod = relax.transform.FuseOps()(mod)
    mod = relax.transform.FuseTIR()(mod)
    with target:
        mod = dl.ApplyDefaultSchedule(VectorizeInjective(), VectorizeChannels())(mod)
    return mod
