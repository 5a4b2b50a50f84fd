"""The depthwise kernels' pixel tile on this CPU: every depthwise kernel of the ImageNet
MobileNetV2 (W8A8, calibrated as in benchmarks/latency.py) built at each tile that divides its
output width and timed alone, one thread (MetaSchedule's local runner, as `qcompiler tune`
times kernels), median of `--repeats` timings, each a median of 3 runs of at least 50 ms.

    python benchmarks/depthwise_tiles.py [--repeats 7]   # writes benchmarks/results/depthwise_tiles_<isa>.md

It is how the template's tile for CPUs with 16 vector registers (AVX2) was chosen
(depthwise.SIXTEEN_REGISTER_TILES), and the VNNI kernel's (depthwise.VNNI_TILES); the sums per
tile order compare the template orders. On a CPU with AVX-512 VNNI the kernels are
depthwise_vnni.py's, and the generic kernel (depthwise.py, at its template tile) is timed beside
them.
"""

from __future__ import annotations

import os

os.environ.setdefault("TVM_NUM_THREADS", "1")  # before tvm starts its thread pool

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from latency import imagenet_kernel_tasks, publish  # noqa: E402
from qcompiler.backends.tvm import tuning  # noqa: E402
from qcompiler.backends.tvm.schedules.depthwise import SIXTEEN_REGISTER_TILES, VNNI_TILES, DepthwiseTask  # noqa: E402
from qcompiler.backends.tvm.schedules.geometry import pixel_tile  # noqa: E402
from qcompiler.backends.tvm.targets import native_target, tvm_target  # noqa: E402

TILES = (1, 2, 4, 7, 8)
ORDERS = {"32 registers (8, 7, 6, 4, 2, 1)": (8, 7, 6, 4, 2, 1), f"16 registers {SIXTEEN_REGISTER_TILES}":
          SIXTEEN_REGISTER_TILES, "(4, 2, 1)": (4, 2, 1), f"VNNI kernel's {VNNI_TILES}": VNNI_TILES}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    spec = native_target()
    tasks = [t for t in imagenet_kernel_tasks(spec) if isinstance(t, DepthwiseTask)]
    measurer = tuning.Measurer(tvm_target(spec))
    rows, times, generic = [], [], []
    for task in tasks:
        tiles = [t for t in TILES if task.output_width() % t == 0]
        funcs = [tuning.scheduled(task, t) for t in tiles]
        if task.vnni:   # the generic kernel beside it, at its own template tile
            plain = dataclasses.replace(task, vnni=False)
            funcs.append(tuning.scheduled(plain, plain.template_tile()))
        runs = [float(np.median(r)) if r else np.nan for r in measurer.repeated_ms(funcs, args.repeats)]
        ms = {t: v for t, v in zip(tiles, runs) if not np.isnan(v)}
        times.append((task, ms))
        generic.append(runs[-1] if task.vnni else np.nan)
        print(task.name(), ms, generic[-1], flush=True)
        rows.append(f"| {task.name()} | {task.output_width()} | " + " | ".join(
            f"{ms[t]:.4f}" if t in ms else "" for t in TILES) + f" | {min(ms, key=ms.get)} |"
            + (f" {generic[-1]:.4f} |" if task.vnni else ""))
    sums = [f"| {label} | " + f"{sum(ms.get(pixel_tile(task.output_width(), order), np.nan) for task, ms in times):.4f} |"
            for label, order in ORDERS.items()]
    isa = spec.dot_kernels[0] if spec.dot_kernels else "generic"
    vnni = any(task.vnni for task in tasks)
    text = "\n".join([
        f"# The depthwise kernels' pixel tile ({isa})", "",
        f"`python benchmarks/depthwise_tiles.py --repeats {args.repeats}`; {platform.machine()}, {spec.description}. "
        "Each depthwise kernel of the ImageNet MobileNetV2 (W8A8) built at each pixel tile dividing its output "
        "width and timed alone, one thread: median ms of "
        f"{args.repeats} timings (MetaSchedule's local runner, as `qcompiler tune` times kernels).", "",
        "| kernel | output width | " + " | ".join(f"tile {t}" for t in TILES) + " | fastest |"
        + (" generic kernel ms |" if vnni else ""),
        "|---|---|" + "---|" * len(TILES) + "---|" + ("---|" if vnni else ""), *rows, "",
        "All the kernels at the tile each template order picks (ms, summed):", "",
        "| template order | ms |", "|---|---|", *sums,
        *([f"| the generic kernel (depthwise.py), its template tiles | {np.nansum(generic):.4f} |"] if vnni else []), ""])
    publish(text, Path(__file__).resolve().parent / "results" / f"depthwise_tiles_{isa}.md")


if __name__ == "__main__":
    main()
