"""What the requantization epilogue costs: every convolution and depthwise kernel of the
ImageNet MobileNetV2 (W8A8, calibrated as in benchmarks/latency.py) timed alone, one thread,
as its build makes it and again with its requantization replaced by a shift and a clamp (the
least any epilogue that writes 8-bit outputs does: an upper bound on what a cheaper exact
requantization could save). MetaSchedule's local runner, as `qcompiler tune` times kernels:
median of `--repeats` timings, each a median of 3 runs of at least 50 ms.

    python benchmarks/epilogue.py [--repeats 5]   # writes benchmarks/results/epilogue_<isa>.md

The clamp-only kernels compute wrong numbers: they are for timing only, never built into a library.
"""

from __future__ import annotations

import os

os.environ.setdefault("TVM_NUM_THREADS", "1")  # before tvm starts its thread pool

import argparse  # noqa: E402
import contextlib  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from latency import imagenet_kernel_tasks, kernel_medians, publish  # noqa: E402
from qcompiler.backends.tvm import tuning  # noqa: E402
from qcompiler.backends.tvm.schedules import requantize  # noqa: E402
from qcompiler.backends.tvm.targets import native_target, tvm_target  # noqa: E402


def _shift_and_clamp(tvm, read, corr, m, params, dtype: str):
    _, lo, hi, bits = params
    # _as: as many lanes as the value (the VNNI depthwise kernel computes 16 channels at a time)
    return lambda b, y, x, o: requantize._as(tvm.tirx.max(tvm.tirx.min((read(b, y, x, o) + corr(o)) >> bits, hi), lo), dtype)


@contextlib.contextmanager
def clamp_only_epilogues():
    """Kernels scheduled inside take _shift_and_clamp for the int32 and high-word forms (the
    ones MobileNetV2's layers use; the int64-ties form stays)."""
    saved = requantize._int32_requantize, requantize._high_word_requantize
    requantize._int32_requantize = requantize._high_word_requantize = _shift_and_clamp
    try:
        yield
    finally:
        requantize._int32_requantize, requantize._high_word_requantize = saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    spec = native_target()
    tasks = [t for t in imagenet_kernel_tasks(spec) if t.requantize is not None]
    measurer = tuning.Measurer(tvm_target(spec))
    built = kernel_medians(measurer, tasks, args.repeats)
    with clamp_only_epilogues():
        clamped = kernel_medians(measurer, tasks, args.repeats)
    rows = [f"| {t.name()} | {a:.4f} | {b:.4f} | {100 * (a - b) / a:.0f}% |" for t, a, b in zip(tasks, built, clamped)]
    total, floor = np.nansum(built), np.nansum(clamped)
    isa = spec.dot_kernels[0] if spec.dot_kernels else "generic"
    text = "\n".join([
        f"# The requantization epilogue's cost ({isa})", "",
        f"`python benchmarks/epilogue.py --repeats {args.repeats}`; {platform.machine()}, {spec.description}. "
        "Each convolution and depthwise kernel of the ImageNet MobileNetV2 (W8A8) timed alone, one thread, median ms "
        f"of {args.repeats} timings (MetaSchedule's local runner): as the build makes it, and with its requantization "
        "replaced by a shift and a clamp (wrong numbers, timing only: the least an epilogue writing 8-bit outputs "
        "does). The suffix names the form: `_i` int32 parts (three 32-bit multiplies per output), `_h` int64 products "
        "and their high words, `_t` ties possible (int64, half to even).", "",
        "| kernel | as built ms | shift and clamp ms | epilogue share |", "|---|---|---|---|", *rows,
        f"| all {len(tasks)} kernels | {total:.4f} | {floor:.4f} | {100 * (total - floor) / total:.0f}% |", ""])
    publish(text, Path(__file__).resolve().parent / "results" / f"epilogue_{isa}.md")


if __name__ == "__main__":
    main()
