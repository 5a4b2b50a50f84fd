"""Tuned against untuned: `qcompiler tune` on this machine, then the latency of the untuned and
the tuned library next to onnxruntime FP32 and onnxruntime int8, one thread, batch 1, same run.

    python benchmarks/tune.py [--runs 100] [--trials N] [--results F]   # writes benchmarks/results/tune.md
    python benchmarks/tune.py --estimate cortex-a76,cortex-a55 [--trials N]   # tune_arm.md

For each model (W8A8, qcompiler's defaults, calibration data as in benchmarks/latency.py):
every convolution kernel is tuned (all pixel tilings, or the `--trials` nearest the template's),
the tuning time is reported, and the four runners are timed by latency.timings (taking turns,
rotating order). Below the latency table, each model's per-kernel table: the template's tiling
and time, the best, the speed-up and GOPS (2 x multiply-adds per second) of the kernel alone.

With --estimate, no library is timed: each model is tuned for arm64-dotprod with llvm-mca's
estimate for each named core (`qcompiler tune --estimate`), and tune_arm.md gives the estimated
milliseconds of all tuned kernels, template against tuned, and their share of the core's sdot
peak as llvm-mca models it. Estimates, not measurements.
"""

from __future__ import annotations

import os

os.environ.setdefault("TVM_NUM_THREADS", "1")  # before tvm starts its thread pool

import argparse  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

import qcompiler  # noqa: E402
from latency import model_data, publish, results_flag, timings  # noqa: E402
from qcompiler import models  # noqa: E402
from qcompiler.backends.tvm import tuning  # noqa: E402
from qcompiler.backends.tvm.targets import native_target  # noqa: E402
from qcompiler.compiler import compile_qdq, write_library  # noqa: E402
from qcompiler.executor import session  # noqa: E402
from qcompiler.runtime import load  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "tune.md"
ARM_RESULTS = RESULTS.with_name("tune_arm.md")


def measure(name: str, runs: int, trials: int | None, workdir: Path) -> dict:
    path = models.path(f"{name}.onnx")
    calib, x = model_data(name)
    qdq = qcompiler.quantize(qcompiler.load(path), {"input": calib}, "w8a8", progress=False).qdq
    spec = native_target()
    db = tuning.TuningDatabase(spec.name)
    start = time.perf_counter()
    results = tuning.tune(qdq.to_onnx(), spec, 1, db, trials=trials, report=lambda line: print(line, flush=True))
    seconds = time.perf_counter() - start
    for label, database in (("untuned", None), ("tuned", db)):
        write_library(compile_qdq(qdq, spec, 1, tuning_db=database), qdq, workdir / f"{name}-{label}")
    fp32, int8 = session(qcompiler.load(path), threads=1), session(qdq, threads=1)
    untuned, tuned = load(workdir / f"{name}-untuned"), load(workdir / f"{name}-tuned")
    feeds = {"input": x}
    row = {"model": name, "input": "x".join(map(str, x.shape)), "tasks": len(results), "seconds": seconds,
           "points": sum(len(r.points) for r in results), "peak": db.peak_gops,
           "kernels": tuning.table(results, db.peak_gops)}
    row.update(timings({"ort_fp32": lambda: fp32.run(None, feeds), "ort_int8": lambda: int8.run(None, feeds),
                        "untuned": lambda: untuned.run(feeds), "tuned": lambda: tuned.run(feeds)}, runs))
    return row


def table(rows: list[dict], runs: int, trials: int | None, results: Path = RESULTS) -> str:
    def ms(t):
        return f"{t[0]:.3f} ({t[1]:.3f}-{t[2]:.3f})"

    command = f"python benchmarks/tune.py --runs {runs}" + (f" --trials {trials}" if trials else "") \
        + results_flag(results, RESULTS)
    lines = ["# Autotuning: tuned against untuned (batch 1, one thread)", "",
             f"Made by `{command}` on {platform.machine()} ({native_target().description}), Python "
             f"{platform.python_version()}: median ms of {runs} runs after 5 warm-up runs (10th-90th percentile in "
             "brackets), the four runners in one process taking turns (benchmarks/latency.py's timings). Tuning "
             "times every pixel tiling of each convolution kernel with MetaSchedule's local builder and runner; "
             "its time is the wall time of `qcompiler tune` for the model. Speed-ups are against onnxruntime FP32 "
             "and onnxruntime int8 (its QLinear kernels on the same QDQ model) in the same run.",
             "", "| model | input | kernels tuned (tilings timed) | tuning s | onnxruntime FP32 ms | onnxruntime int8 ms "
             "| untuned ms | tuned ms | tuned vs untuned | tuned vs FP32 | tuned vs int8 | untuned vs FP32 |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['input']} | {r['tasks']} ({r['points']}) | {r['seconds']:.0f} "
                     f"| {ms(r['ort_fp32'])} | {ms(r['ort_int8'])} | {ms(r['untuned'])} | {ms(r['tuned'])} "
                     f"| {r['untuned'][0] / r['tuned'][0]:.2f}x | {r['ort_fp32'][0] / r['tuned'][0]:.2f}x "
                     f"| {r['ort_int8'][0] / r['tuned'][0]:.2f}x | {r['ort_fp32'][0] / r['untuned'][0]:.2f}x |")
    for r in rows:
        peak = (f" The dot-product kernel's measured peak on this machine: {r['peak']:.0f} GOPS (tuning.peak_gops: "
                "two 1x1 convolutions whose operands stay in L1, no requantization, each at its best tiling, the "
                "faster); `% peak` is "
                "each kernel's share of it." if r.get("peak") else "")
        lines += ["", f"## {r['model']}: each kernel alone", "", f"Tuned GOPS: 2 x multiply-adds / tuned time.{peak}",
                  "", "```", r["kernels"], "```"]
    return "\n".join(lines) + "\n"


def estimate(name: str, core: str, trials: int | None) -> dict:
    """The model's kernels tuned for arm64-dotprod by llvm-mca's estimate for `core`."""
    from qcompiler.backends.tvm.targets import get_target

    calib, _ = model_data(name)
    qdq = qcompiler.quantize(qcompiler.load(models.path(f"{name}.onnx")), {"input": calib}, "w8a8", progress=False).qdq
    db = tuning.TuningDatabase("arm64-dotprod")
    start = time.perf_counter()
    results = tuning.tune(qdq.to_onnx(), get_target("arm64-dotprod"), 1, db, trials=trials, estimate=core,
                          report=lambda line: print(line, flush=True))
    tuned = sum(r.tuned_ms for r in results)
    return {"model": name, "core": core, "tasks": len(results), "points": sum(len(r.points) for r in results),
            "seconds": time.perf_counter() - start, "template": sum(r.template_ms for r in results),
            "tuned": tuned, "gops": 2 * sum(r.macs for r in results) / (tuned * 1e6),
            "peak": db.peak_gops, "kernels": tuning.table(results, db.peak_gops, core)}


def arm_table(rows: list[dict], trials: int | None) -> str:
    from qcompiler.backends.tvm.mca_estimate import CORES

    cores = ",".join(dict.fromkeys(r["core"] for r in rows))
    command = f"python benchmarks/tune.py --estimate {cores}" + (f" --trials {trials}" if trials else "")
    lines = ["# Autotuning for ARM without ARM hardware: llvm-mca estimates (arm64-dotprod, batch 1)", "",
             f"Made by `{command}` on {platform.machine()}. **Estimates, not measurements**: each kernel tiling is "
             "built for aarch64, run once under qemu-aarch64 to count how often each block of it runs, and each "
             "block's cycles come from llvm-mca's scheduling model of the core (Debian's LLVM 14). Caches, memory "
             "and branch prediction are left out; cycles become milliseconds at a nominal clock ("
             + ", ".join(f"{c} {CORES[c].ghz} GHz" for c in dict.fromkeys(r["core"] for r in rows))
             + "). The peak is llvm-mca's throughput of independent sdot instructions at that clock. Only the "
             "convolution and depthwise kernels are tuned; the rest of the library is not in these sums.",
             "", "| model | core | kernels (tilings estimated) | estimate s | template ms (est.) | tuned ms (est.) "
             "| tuned vs template | tuned GOPS (est.) | sdot peak GOPS | % of peak |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['core']} | {r['tasks']} ({r['points']}) | {r['seconds']:.0f} "
                     f"| {r['template']:.3f} | {r['tuned']:.3f} | {r['template'] / r['tuned']:.2f}x | {r['gops']:.1f} "
                     f"| {r['peak']:.0f} | {100 * r['gops'] / r['peak']:.0f}% |")
    for r in rows:
        lines += ["", f"## {r['model']} on {r['core']}: each kernel alone", "", "```", r["kernels"], "```"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--results", type=Path, default=RESULTS, help="the table's file (default %(default)s; another "
                        "host's: benchmarks/results/tune_avx2.md)")
    parser.add_argument("--trials", type=int, default=None, help="tilings per kernel (default: all)")
    parser.add_argument("--models", default="fashion_resnet8,fashion_mobilenetv2,mobilenet_v2_imagenet")
    parser.add_argument("--estimate", metavar="CORES", help="llvm-mca estimates for these ARM cores instead "
                        "of timing here (comma-separated: cortex-a55,cortex-a76,neoverse-n1,neoverse-v1)")
    args = parser.parse_args()
    if args.estimate:
        rows = [estimate(name, core, args.trials) for name in args.models.split(",") for core in args.estimate.split(",")]
        publish(arm_table(rows, args.trials), ARM_RESULTS)
        return
    with tempfile.TemporaryDirectory() as workdir:
        rows = [measure(name, args.runs, args.trials, Path(workdir)) for name in args.models.split(",")]
    publish(table(rows, args.runs, args.trials, args.results), args.results)


if __name__ == "__main__":
    main()
