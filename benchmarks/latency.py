"""Latency and size: onnxruntime FP32, onnxruntime on the QDQ model (its int8 kernels), and the
qcompiler library, one thread each, in one process, batch 1.

    python benchmarks/latency.py [--runs 50]     # writes benchmarks/results/latency.md
    python benchmarks/latency.py --results benchmarks/results/latency_avx2.md   # another host's table
    python benchmarks/latency.py --threads 1,2   # thread scaling: benchmarks/results/latency_threads.md
    python benchmarks/latency.py --threads 1,2 --results benchmarks/results/latency_threads_avx2.md

Each runner gets 5 warm-up calls, then the median (and the 10th-90th percentile spread) of
`--runs` timed calls on the same input, the runners taking turns (the order rotating every
turn; each timed call directly after an untimed call of the same runner: steady state). Models: the two Fashion-MNIST nets (1x1x28x28) and the
ImageNet MobileNetV2 (1x3x224x224), quantized W8A8 (and W4A8 for the size column) with
qcompiler's defaults; calibration data: 128 Fashion-MNIST subset images, or foolbox's 20
ImageNet samples.

With --threads, the models are built once, then each runner at each thread count is timed in a
process of its own (TVM_NUM_THREADS is read once per process, when TVM's thread pool starts;
onnxruntime's sessions at the same count), so that no runtime's idle workers share the cores
with another's, and the table gives each runner's scaling against the first count. Sizes are
not measured there.
"""

from __future__ import annotations

import os

os.environ.setdefault("TVM_NUM_THREADS", "1")  # before tvm starts its thread pool

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

import qcompiler  # noqa: E402
from qcompiler import models  # noqa: E402
from qcompiler.models.datasets import load_foolbox_imagenet  # noqa: E402
from qcompiler.backends.tvm.targets import native_target  # noqa: E402
from qcompiler.compiler import compile_qdq, write_library  # noqa: E402
from qcompiler.driver import quantize as driver_quantize  # noqa: E402
from qcompiler.executor import session  # noqa: E402
from qcompiler.quant.presets import PRESETS, QuantConfig  # noqa: E402
from qcompiler.runtime import load  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "latency.md"
THREADS_RESULTS = RESULTS.with_name("latency_threads.md")
RUNNERS = ("ort_fp32", "ort_int8", "ours")


def timings(calls: dict, runs: int) -> dict:
    """Per runner: median, 10th and 90th percentile of `runs` calls in milliseconds, after 5
    warm-up calls. The runners take turns call by call, so that a slow spell of this shared
    machine slows all of them alike instead of one runner's whole series, in an order that
    rotates every turn; each timed call right after an untimed one of the same runner."""
    for call in calls.values():
        for _ in range(5):
            call()
    samples = {name: [] for name in calls}
    names = list(calls)
    for turn in range(runs):
        # Each timed call follows an untimed call of the same runner: steady state, as when a
        # model serves requests back to back. Right after another runner, a runner pays for
        # the caches that one leaves (measured: our library 10% slower right after
        # onnxruntime int8 than right after itself). The order rotates too.
        for name in names[turn % len(names):] + names[:turn % len(names)]:
            calls[name]()
            start = time.perf_counter()
            calls[name]()
            samples[name].append((time.perf_counter() - start) * 1000)
    return {name: _summary(series) for name, series in samples.items()}


def block_samples(call, runs: int, blocks: int = 5) -> list[float]:
    """Milliseconds of `runs` calls back to back in `blocks` blocks, 3 untimed calls opening each."""
    samples = []
    for _ in range(blocks):
        for _ in range(3):
            call()
        for _ in range(-(-runs // blocks)):
            start = time.perf_counter()
            call()
            samples.append((time.perf_counter() - start) * 1000)
    return samples


def _summary(series: list[float]) -> tuple[float, float, float]:
    """Median, 10th and 90th percentile."""
    deciles = statistics.quantiles(series, n=10)
    return statistics.median(series), deciles[0], deciles[-1]


def model_data(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(calibration images, one input sample) for a bundled model."""
    if name == "mobilenet_v2_imagenet":
        images, _ = load_foolbox_imagenet()
        return images, images[:1]
    subset = np.load(models.path(models.FASHION_SUBSET))["input"]
    return subset[:128], subset[200:201]


def imagenet_kernel_tasks(spec) -> list:
    """The kernel tasks (tuning.conv_tasks) a build of the ImageNet MobileNetV2 for `spec` makes,
    W8A8 and calibrated as the latency table's library is."""
    from qcompiler.backends.tvm import tuning

    calib, _ = model_data("mobilenet_v2_imagenet")
    qdq = qcompiler.quantize(qcompiler.load(models.path("mobilenet_v2_imagenet.onnx")), {"input": calib}, "w8a8",
                             progress=False).qdq
    return tuning.conv_tasks(qdq.to_onnx(), spec, 1)


def kernel_medians(measurer, tasks: list, repeats: int) -> list[float]:
    """Each kernel task at its build's tiling, timed alone: median ms of `repeats` timings (nan
    where it did not run)."""
    from qcompiler.backends.tvm import tuning

    runs = measurer.repeated_ms([tuning.scheduled(t, t.template_tile()) for t in tasks], repeats)
    return [float(np.median(r)) if r else float("nan") for r in runs]


def library_bytes(path: Path, calib: np.ndarray, config: QuantConfig, out: Path) -> int:
    """Size of the x86 library of the model quantized with `config`."""
    qdq = driver_quantize(qcompiler.load(path), {"input": calib}, config, progress=False).qdq
    write_library(compile_qdq(qdq, "native", batch=1), qdq, out)
    return (out / "model.so").stat().st_size


def measure(name: str, runs: int, workdir: Path) -> dict:
    path = models.path(f"{name}.onnx")
    calib, x = model_data(name)
    row = {"model": name, "input": "x".join(map(str, x.shape)), "fp32_bytes": path.stat().st_size}
    build(name, workdir)
    row.update(measure_sizes(name, path, calib, workdir / name, workdir))
    calls = {runner: runner_call(name, runner, workdir, 1) for runner in RUNNERS}
    # the W4A8 library measure_sizes built: its 4-bit layers on their own kernels where the CPU has them
    ours_w4, feeds = load(workdir / f"{name}-w4a8"), {"input": x}
    calls["ours_w4a8"] = lambda: ours_w4.run(feeds)   # one feeds dict, as runner_call's, not one per timed call
    row.update(timings(calls, runs))
    return row


def measure_sizes(name: str, path: Path, calib: np.ndarray, out: Path, workdir: Path) -> dict:
    """Bytes of the QDQ model and of the W8A8, W4A8 and all-low-bit libraries."""
    row = {}
    row["qdq_bytes"] = (out / "model.qdq.onnx").stat().st_size
    row["so_bytes"] = (out / "model.so").stat().st_size
    row["so4_bytes"] = library_bytes(path, calib, QuantConfig(PRESETS["w4a8"]), workdir / f"{name}-w4a8")
    # Every layer at 4 bits: the preset keeps the first and last at 8 (the classifier is 37% of
    # MobileNetV2's weights), which bounds its size ratio below 6x whatever the packing.
    row["so4all_bytes"] = library_bytes(path, calib, QuantConfig(PRESETS["w4a8"], keep_edge_layers_8bit=False),
                                        workdir / f"{name}-w4a8-all")
    row["so2all_bytes"] = library_bytes(path, calib, QuantConfig(PRESETS["w2a4"], keep_edge_layers_8bit=False),
                                        workdir / f"{name}-w2a4-all")
    return row


def table(rows: list[dict], runs: int, results: Path = RESULTS) -> str:
    def ms(t):
        return f"{t[0]:.3f} ({t[1]:.3f}-{t[2]:.3f})"

    lines = ["# Latency and size (batch 1, one thread)", "",
             f"Made by `python benchmarks/latency.py --runs {runs}{results_flag(results)}` on {platform.machine()} "
             f"({native_target().description}), Python {platform.python_version()}: median ms of {runs} runs after 5 "
             "warm-up runs (10th-90th percentile in brackets), all runners in one process, one thread each, "
             "taking turns in a rotating order; each timed call directly follows an untimed call of the same runner "
             "(steady state, as when a model serves requests back to back). "
             "onnxruntime int8 = onnxruntime on the same QDQ model (its QLinear kernels). qcompiler W4A8 = the "
             "library of the W4A8 preset (first and last layer 8-bit). Speed-up = onnxruntime "
             "FP32 / runner; size ratio = FP32 .onnx bytes / library bytes (the .so holds code and constants). "
             "W4A8 = the preset (first and last layer 8-bit); W4A8 every layer = the same with "
             "`keep_edge_layers_8bit=False`, and W2A4 every layer the w2a4 preset so (size only: their accuracy "
             "is not measured here).",
             "", "| model | input | onnxruntime FP32 ms | onnxruntime int8 ms | qcompiler ms | speed-up vs FP32 "
             "| vs onnxruntime int8 | qcompiler W4A8 ms | W4A8 vs FP32 | FP32 .onnx | W8A8 .so (ratio) | W4A8 .so (ratio) "
             "| W4A8 every layer .so (ratio) | W2A4 every layer .so (ratio) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['input']} | {ms(r['ort_fp32'])} | {ms(r['ort_int8'])} | {ms(r['ours'])} "
            f"| {r['ort_fp32'][0] / r['ours'][0]:.2f}x | {r['ort_int8'][0] / r['ours'][0]:.2f}x "
            f"| {ms(r['ours_w4a8'])} | {r['ort_fp32'][0] / r['ours_w4a8'][0]:.2f}x "
            f"| {r['fp32_bytes'] / 1024:.0f} KiB | {r['so_bytes'] / 1024:.0f} KiB ({r['fp32_bytes'] / r['so_bytes']:.2f}x) "
            f"| {r['so4_bytes'] / 1024:.0f} KiB ({r['fp32_bytes'] / r['so4_bytes']:.2f}x) "
            f"| {r['so4all_bytes'] / 1024:.0f} KiB ({r['fp32_bytes'] / r['so4all_bytes']:.2f}x) "
            f"| {r['so2all_bytes'] / 1024:.0f} KiB ({r['fp32_bytes'] / r['so2all_bytes']:.2f}x) |")
    return "\n".join(lines) + "\n"


def results_flag(results: Path, default: Path = RESULTS) -> str:
    """The --results argument that reproduces a table written to `results` (none for the default)."""
    return "" if results == default else f" --results {results.resolve().relative_to(default.parents[2])}"


def build(name: str, workdir: Path) -> None:
    """The model's W8A8 library and its QDQ model (model.qdq.onnx) in workdir/name."""
    calib, _ = model_data(name)
    qdq = qcompiler.quantize(qcompiler.load(models.path(f"{name}.onnx")), {"input": calib}, "w8a8", progress=False).qdq
    write_library(compile_qdq(qdq, "native", batch=1), qdq, workdir / name)


def runner_call(name: str, runner: str, workdir: Path, threads: int):
    """One runner of a model built by `build`, on the model's sample input."""
    _, x = model_data(name)
    feeds = {"input": x}
    if runner == "ours":
        library = load(workdir / name)
        return lambda: library.run(feeds)
    model = models.path(f"{name}.onnx") if runner == "ort_fp32" else workdir / name / "model.qdq.onnx"
    ort = session(qcompiler.load(model), threads=threads)
    return lambda: ort.run(None, feeds)


#: Processes per runner and thread count: on a shared 2-vCPU host one process's median can be
#: 50% off the next one's at 2 threads, so the table pools PROCESSES of them (taking turns).
PROCESSES = 5


def thread_rows(counts: list[int], runs: int, names: list[str]) -> dict[int, list[dict]]:
    """Each thread count's rows: each runner timed by this script in processes of its own, the
    runs of its PROCESSES processes pooled (runners and counts taking turns between processes)."""
    samples = {(count, runner, name): [] for count in counts for runner in RUNNERS for name in names}
    with tempfile.TemporaryDirectory() as workdir:
        for name in names:
            build(name, Path(workdir))
        for _ in range(PROCESSES):
            for count in counts:
                for runner in RUNNERS:
                    out = Path(workdir) / "times.json"
                    subprocess.run([sys.executable, __file__, "--runs", str(-(-runs // PROCESSES)), "--models",
                                    ",".join(names), "--threads", str(count), "--runner", runner, "--workdir", workdir,
                                    "--times-json", str(out)], check=True,
                                   env={**os.environ, "TVM_NUM_THREADS": str(count)})
                    for name, series in zip(names, json.loads(out.read_text())):
                        samples[(count, runner, name)] += series
    return {count: [{"model": name, **{runner: _summary(samples[(count, runner, name)]) for runner in RUNNERS}}
                    for name in names] for count in counts}


def threads_table(rows: dict[int, list[dict]], runs: int, results: Path = THREADS_RESULTS) -> str:
    def ms(t):
        return f"{t[0]:.3f} ({t[1]:.3f}-{t[2]:.3f})"

    counts = sorted(rows)
    first = counts[0]
    lines = ["# Latency by thread count (batch 1)", "",
             f"Made by `python benchmarks/latency.py --threads {','.join(map(str, counts))} --runs {runs}"
             f"{results_flag(results, THREADS_RESULTS)}` on "
             f"{platform.machine()} ({native_target().description}, {os.cpu_count()} logical CPUs), Python "
             f"{platform.python_version()}: qcompiler's library with "
             "TVM_NUM_THREADS threads (its kernels split output rows over TVM's thread pool), onnxruntime's "
             "sessions with intra_op_num_threads at the same count. Each runner at each count ran in "
             f"{PROCESSES} processes of its own (the libraries and QDQ models built once before; runners and counts "
             f"taking turns between processes), {-(-runs // PROCESSES)} runs each, back to back in 5 blocks opened by "
             "3 untimed calls each; the table pools the processes' runs. Not taking turns with the others as in "
             "latency.md: with two threads, "
             "runtimes in one process fight over the cores (each one's idle workers spin), which measured 15.9 ms "
             "for a 0.6 ms model taking turns call by call, and onnxruntime int8's median 5.96 ms for a run whose "
             "10th percentile was 1.88 ms taking turns block by block. Between processes, one runner's median at 2 "
             "threads varied by up to 50% on this shared host (the pooled percentiles show it). Median ms of the runs "
             "(10th-90th percentile). Scaling = the runner's median at "
             f"{first} thread(s) / at this count, across the processes. Kernels below 2^20 multiply-adds stay on "
             "one thread (cpu_generic.MIN_PARALLEL_MACS), depthwise ones below 2^17 (MIN_PARALLEL_DEPTHWISE_MACS).", "",
             "| model | threads | onnxruntime FP32 ms | onnxruntime int8 ms | qcompiler ms | vs FP32 | vs int8 "
             "| scaling FP32 | scaling int8 | scaling qcompiler |", "|---|---|---|---|---|---|---|---|---|---|"]
    for index in range(len(rows[first])):
        for count in counts:
            r = rows[count][index]
            scale = [rows[first][index][k][0] / r[k][0] for k in RUNNERS]
            lines.append(f"| {r['model']} | {count} | {ms(r['ort_fp32'])} | {ms(r['ort_int8'])} | {ms(r['ours'])} "
                         f"| {r['ort_fp32'][0] / r['ours'][0]:.2f}x | {r['ort_int8'][0] / r['ours'][0]:.2f}x | "
                         + " | ".join(f"{v:.2f}x" for v in scale) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--models", default="fashion_resnet8,fashion_mobilenetv2,mobilenet_v2_imagenet")
    parser.add_argument("--threads", help="thread counts, comma-separated (1,2): the scaling table instead")
    parser.add_argument("--results", type=Path, default=RESULTS,
                        help=f"the table's file (default %(default)s; with --threads {THREADS_RESULTS.name})")
    # one runner's times at one thread count, for --threads: its process, the built models' folder, where to write
    parser.add_argument("--runner", choices=RUNNERS, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--times-json", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.times_json:
        times = [block_samples(runner_call(name, args.runner, args.workdir, int(args.threads)), args.runs)
                 for name in args.models.split(",")]
        args.times_json.write_text(json.dumps(times))
        return
    if args.threads:
        counts = [int(c) for c in args.threads.split(",")]
        results = THREADS_RESULTS if args.results == RESULTS else args.results
        publish(threads_table(thread_rows(counts, args.runs, args.models.split(",")), args.runs, results), results)
        return
    with tempfile.TemporaryDirectory() as workdir:
        rows = [measure(name, args.runs, Path(workdir)) for name in args.models.split(",")]
    text = table(rows, args.runs, args.results)
    if "mobilenet_v2_imagenet" in args.models.split(","):
        text += peak_section(PEAK_REPEATS)
    publish(text, args.results)


PEAK_REPEATS = 5


def peak_section(repeats: int) -> str:
    """This core's measured dot-product peak (tuning.peak_gops) and each kernel of the ImageNet
    MobileNetV2 library's share of it, timed alone at its build's tiling (untuned, as the table's
    library); empty where the CPU has no dot-product kernel."""
    from qcompiler.backends.tvm import tuning
    from qcompiler.backends.tvm.targets import tvm_target

    spec = native_target()
    if spec.dot_kernel not in tuning.PEAK_KERNELS:
        return ""
    tasks = imagenet_kernel_tasks(spec)
    measurer = tuning.Measurer(tvm_target(spec))
    peak = measurer.peak_gops(spec.dot_kernel)
    medians = kernel_medians(measurer, tasks, repeats)
    lines = ["", "## The ImageNet MobileNetV2's kernels against this core's peak", "",
             f"The dot-product kernel's measured peak on this machine: {peak:.0f} GOPS (`tuning.peak_gops`: two 1x1 "
             "convolutions whose operands stay in L1, no requantization, each at its best tiling, the faster; one "
             "thread). Each "
             "convolution and depthwise kernel of the W8A8 library above (one per shape: the model makes 52 calls of "
             f"them), timed alone at its build's tiling, one thread, median ms of {repeats} timings (MetaSchedule's "
             "local runner, as `qcompiler tune` times kernels); GOPS = 2 x multiply-adds / time.", "",
             "| kernel | ms | GOPS | % of peak |", "|---|---|---|---|"]
    for task, ms in zip(tasks, medians):
        if np.isnan(ms):
            continue
        gops = 2 * task.macs() / (ms * 1e6)
        lines.append(f"| {task.name()} | {ms:.4f} | {gops:.1f} | {100 * gops / peak:.0f}% |")
    return "\n".join(lines) + "\n"


def publish(text: str, path: Path) -> None:
    """Print a results table and write it to its file under benchmarks/results."""
    print(text)
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
