"""Mixed precision: BRECQ's genetic search for weight bits per layer against uniform W4A8 and W2A4
at equal size (the uniform model's own weight bytes as the budget), with nearest rounding (plus
bias correction) and with BRECQ reconstruction; and the GA against the greedy and exact searches
on the same problems (summed sensitivity reached, and time).

    apt-get install dataset-fashion-mnist
    pip install -e .
    python benchmarks/mixed_precision.py --iters 1000            # writes benchmarks/results/mixed.md
    python benchmarks/mixed_precision.py --part latency          # writes benchmarks/results/mixed_latency.md

Data: calibrated on 1024 Fashion-MNIST training images (seed 0; sensitivities on 128 of them),
evaluated on all 10,000 test images. Sizes are the weights as the arm64-dotprod library stores
them (packed: two 4-bit or four 2-bit weights a byte, channels padded to the kernel's blocks),
checked against the compiled library's weight bytes by tests/test_mixed_precision.py.

`--part latency`: at equal *measured latency* on this machine (target native, batch 1, one
thread): the uniform W4A8 library is built and timed, and its median is the GA's --max-latency
budget (nearest rounding); then the GA's library is built and all are timed again side by side
(runs taking turns, as benchmarks/latency.py does).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")

from qcompiler import ir, models  # noqa: E402
from qcompiler.blocks import ReconstructConfig  # noqa: E402
from qcompiler.driver import quantize  # noqa: E402
from qcompiler.mixed_precision import BitBudget  # noqa: E402
from qcompiler.quant.bitsearch import exact_search, genetic_search, greedy_search  # noqa: E402
from qcompiler.quant.presets import load_config  # noqa: E402

from latency import publish, timings  # noqa: E402
from lowbit_accuracy import fashion, top1  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = ("fashion_resnet8", "fashion_mobilenetv2")
TARGET = "arm64-dotprod"


def uniform_size(model: ir.Model, preset: str, calib) -> int:
    """The uniform preset's weight bytes on TARGET: the search's accounting with every searched
    layer at the preset's bits (a one-assignment budget)."""
    from qcompiler.backends.tvm.layer_costs import layer_shapes, stored_weight_bytes
    from qcompiler.backends.tvm.targets import get_target
    from qcompiler.driver import build_pipeline
    from qcompiler.mixed_precision import searched_layers

    config = load_config(None, preset, None, [])
    float_model = build_pipeline()(model.copy()).model
    layers, pinned, floating = searched_layers(float_model, config)
    shapes, spec = layer_shapes(float_model, list(layers)), get_target(TARGET)
    bits = config.preset.weights.bits
    return floating + sum(stored_weight_bytes(shapes[n], pinned.get(n, bits), spec) for n in layers)


def run(model: ir.Model, preset: str, calib, images, labels, budget: BitBudget | None, iters: int | None) -> dict:
    start = time.perf_counter()
    reconstruct = ReconstructConfig(iters=iters, samples=1024) if iters else None
    result = quantize(model.copy(), calib, load_config(None, preset, None, []), progress=False, bits=budget,
                      reconstruct=reconstruct)
    row = {"top1": top1(result.qdq, images, labels), "seconds": time.perf_counter() - start}
    if result.mixed is not None:
        a = result.mixed.assignment
        row.update(size=a.size, bits=" ".join(str(b) for b in result.mixed.bits_of().values()),
                   mixed=result.mixed)
    return row


def search_rows(mixed) -> list[str]:
    """GA, greedy and exact on the same problem: summed sensitivity, size, seconds."""
    problem, rows = mixed.problem, []
    for name, search in (("genetic", lambda p: genetic_search(p, seed=0)), ("greedy", greedy_search),
                         ("exact (DP, separable)", exact_search)):
        a = search(problem)
        rows.append(f"| {name} | {a.objective:.5g} | {a.size:,} | {a.seconds:.3f} |")
    return rows


def budgets(model: ir.Model, calib) -> list[tuple[str, int, str | None]]:
    """(label, size, uniform preset or None) in the w4a8 scheme: uniform 2-bit (the GA forced to
    every layer's fewest bits), a third and two thirds of the way to uniform 4-bit, uniform 4-bit,
    half way to uniform 8-bit."""
    s2, s4 = uniform_size(model, "w2a4", calib), uniform_size(model, "w4a8", calib)
    s8 = uniform_size(model, "w8a8", calib)
    return [("uniform 2-bit size", s2, None), ("mixed", s2 + (s4 - s2) // 3, None),
            ("mixed", s2 + 2 * (s4 - s2) // 3, None), ("uniform W4A8 size", s4, "w4a8"), ("mixed", (s4 + s8) // 2, None),
            ("uniform W8A8 size", s8, "w8a8")]


def built(model: ir.Model, preset: str, calib, workdir: Path, budget: BitBudget | None = None) -> dict:
    """Quantized (nearest rounding), compiled for native and loaded: top-1 comes later."""
    from qcompiler.compiler import compile as compile_model
    from qcompiler.runtime import load

    out = workdir / f"{preset}-{'ga' if budget else 'uniform'}"
    run = compile_model(model.copy(), calib, "native", output_dir=out, config=load_config(None, preset, None, []),
                        progress=False, bits=budget, check_samples=0)
    row = {"qdq": run.qdq, "library": load(out), "mixed": run.quantized.mixed}
    if row["mixed"] is not None:
        row["bits"] = " ".join(str(b) for b in row["mixed"].bits_of().values())
    return row


def latency_part(args, calib, images, labels) -> None:
    import tempfile

    x = {"input": images[:1]}
    # Fresh latency measurements, not a table cached in another state of this machine.
    os.environ["QCOMPILER_CACHE"] = tempfile.mkdtemp(prefix="qcompiler-bench-cache-")
    lines = ["# Mixed precision at equal measured latency", "",
             f"`python benchmarks/mixed_precision.py --part latency --runs {args.runs}`; "
             f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, one thread, batch 1, target native. "
             "Top-1 (%) on the 10,000 Fashion-MNIST test images, nearest rounding, calibrated on "
             f"{args.calib} training images. The GA's budget is the uniform W4A8 library's median latency measured "
             "first; its prediction is the reference library's rest plus its kernels timed alone (measured in this "
             "run, no cache; docs/"
             "mixed_precision.md); then all libraries are timed again, taking turns, "
             f"{args.runs} runs each (median, 10th-90th percentile). On this CPU (no AVX-512 VNNI) convolutions "
             "run TVM's generic int8 code whatever their bits, and the depthwise kernels are faster at 8 bits "
             "than unpacking 4 or 2: fewer bits buy no speed here, and the GA, given only a latency budget, "
             "keeps 8 bits.", "",
             "| model | library | top-1 | budget (ms) | predicted (ms) | measured median (ms) | p10-p90 | bits (graph order) |",
             "|---|---|---|---|---|---|---|---|"]
    for name in args.models:
        model = ir.load(models.path(f"{name}.onnx"))
        with tempfile.TemporaryDirectory() as folder:
            rows = {"uniform W4A8": built(model, "w4a8", calib, Path(folder)),
                    "uniform W8A8": built(model, "w8a8", calib, Path(folder))}
            first = timings({"w4": lambda: rows["uniform W4A8"]["library"].run(x)}, args.runs)["w4"][0]
            budget = BitBudget(max_latency=first, target="native")
            rows["GA at W4A8's latency"] = built(model, "w4a8", calib, Path(folder), budget)
            measured = timings({label: (lambda r=r: r["library"].run(x)) for label, r in rows.items()}, args.runs)
        for label, row in rows.items():
            median, p10, p90 = measured[label]
            mixed = row["mixed"]
            predicted = f"{mixed.assignment.latency:.3f}" if mixed else ""
            print(name, label, median, flush=True)
            lines.append(f"| {name} | {label} | {100 * top1(row['qdq'], images, labels):.2f} | "
                         f"{f'{first:.3f}' if mixed else ''} | {predicted} | {median:.3f} | {p10:.3f}-{p90:.3f} | "
                         f"{row.get('bits', '')} |")
    publish("\n".join(lines) + "\n", RESULTS / "mixed_latency.md")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=["size", "latency"], default="size")
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--iters", type=int, default=1000, help="BRECQ iterations per block (the authors: 20000)")
    parser.add_argument("--calib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=200, help="timed runs per library (--part latency)")
    args = parser.parse_args()
    calib, images, labels = fashion(args.calib)
    if args.part == "latency":
        return latency_part(args, calib, images, labels)
    lines = ["# Mixed precision: GA bit widths against uniform weights, by size", "",
             f"`python benchmarks/mixed_precision.py --iters {args.iters}`; {platform.processor() or platform.machine()},"
             f" {os.cpu_count()} cores. Top-1 (%) on the 10,000 Fashion-MNIST test images, calibrated on {args.calib} "
             f"training images. Scheme w4a8: 8-bit activations, first and last layer 8-bit, the other layers' weights "
             f"2, 4 or 8 bits as the GA (seed 0, population 50, at most 100 generations) picks them under the size "
             f"budget: weight bytes as the {TARGET} library stores them. At the uniform 2-bit size the GA has no "
             "choice but 2 bits for the convolutions; depthwise layers store 2- and 4-bit weights alike (two to "
             "a byte), so there it takes 4 at no cost. BRECQ: block reconstruction with "
             f"{args.iters} rounding iterations per block (the authors use 20,000). Sensitivities: Fisher-weighted "
             "block output errors on 128 calibration samples.", "",
             "| model | budget (bytes) | point | uniform top-1 (nearest / BRECQ) | GA top-1 (nearest / BRECQ) | "
             "GA size | GA bits (graph order) |", "|---|---|---|---|---|---|---|"]
    searches = []
    for name in args.models:
        model = ir.load(models.path(f"{name}.onnx"))
        for label, size, preset in budgets(model, calib):
            budget = BitBudget(max_size=size, target=TARGET)
            mixed = [run(model, "w4a8", calib, images, labels, budget, iters) for iters in (None, args.iters)]
            uniform = [run(model, preset, calib, images, labels, None, iters) for iters in (None, args.iters)] \
                if preset else None
            shown = " / ".join(f"{100 * r['top1']:.2f}" for r in uniform) if uniform else ""
            print(name, size, label, shown, [r["top1"] for r in mixed], flush=True)
            lines.append(f"| {name} | {size:,} | {label} | {shown} | "
                         f"{' / '.join(format(100 * r['top1'], '.2f') for r in mixed)} | "
                         f"{mixed[0]['size']:,} | {mixed[0]['bits']} |")
            if label == "mixed":
                searches.append((name, mixed[0]["mixed"]))
    lines += ["", "## The searches on the same problems", "",
              "Summed sensitivity (the objective, pair terms included; lower is better) of the assignment each "
              "search returns under the same size budget, its size and the search's time (the sensitivities "
              "and costs measured once, beforehand). The exact search is optimal for the objective without "
              "the intra-block pair terms; its answer is then scored with them.", ""]
    for name, mixed in searches:
        lines += [f"**{name}, budget {mixed.problem.max_size:,} bytes, {len(mixed.problem.layers)} searched layers**",
                  "", "| search | summed sensitivity | size (bytes) | seconds |", "|---|---|---|---|",
                  *search_rows(mixed), ""]
    lines += ["At equal measured latency: [mixed_latency.md](mixed_latency.md) (`--part latency`). Not measured "
              "here: the ImageNet MobileNetV2."]
    publish("\n".join(lines) + "\n", RESULTS / "mixed.md")


if __name__ == "__main__":
    main()
