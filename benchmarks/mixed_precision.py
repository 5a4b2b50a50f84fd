"""Mixed precision: BRECQ's genetic search for weight bits per layer against uniform W4A8 and W2A4
at equal size (the uniform model's own weight bytes as the budget), with nearest rounding (plus
bias correction) and with BRECQ reconstruction; and the GA against the greedy and exact searches
on the same problems (summed sensitivity reached, and time).

    apt-get install dataset-fashion-mnist
    pip install -e .
    python benchmarks/mixed_precision.py --iters 300             # writes benchmarks/results/mixed.md
    python benchmarks/mixed_precision.py --scheme w2a4 --iters 300   # writes benchmarks/results/mixed_w2a4.md
    python benchmarks/mixed_precision.py --part searches         # writes benchmarks/results/mixed_searches.md
    python benchmarks/mixed_precision.py --part latency --iters 300   # writes benchmarks/results/mixed_latency.md
    apt-get install opencv-doc && pip install --no-deps foolbox==3.3.4 scikit-image
    python benchmarks/mixed_precision.py --part imagenet         # writes benchmarks/results/mixed_imagenet.md
    python benchmarks/mixed_precision.py --part imagenet-latency --iters 200   # mixed_imagenet_latency.md
    python benchmarks/mixed_precision.py --part imagenet-brecq --iters 200   # mixed_imagenet_brecq.md
    python benchmarks/mixed_precision.py --part imagenet-brecq --scheme w2a4 --iters 200   # ..._brecq_w2a4.md

Data: calibrated on 1024 Fashion-MNIST training images (seed 0; sensitivities on 128 of them),
evaluated on all 10,000 test images. Sizes are the weights as the arm64-dotprod library stores
them (packed: two 4-bit or four 2-bit weights a byte, channels padded to the kernel's blocks),
checked against the compiled library's weight bytes by tests/test_mixed_precision.py.

`--part latency`: at equal *measured latency* on this machine (target native, batch 1, one
thread): the uniform W4A8 library is built and timed, and its median is the GA's --max-latency
budget (nearest rounding); then the GA's library is built and all are timed again side by side
(runs taking turns, as benchmarks/latency.py does); then each library's bits again with BRECQ
(same kernels, same latency). `--part imagenet-latency`: the same on the ImageNet MobileNetV2,
nearest rounding (and with `--iters`, BRECQ on the w4a8 scheme's libraries), agreement with the
float model on held-out photos.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")

from qcompiler import ir, models  # noqa: E402
from qcompiler.blocks import ReconstructConfig  # noqa: E402
from qcompiler.driver import quantize  # noqa: E402
from qcompiler.mixed_precision import BitBudget  # noqa: E402
from qcompiler.quant.bitsearch import (exact_search, genetic_search, greedy_search,  # noqa: E402
                                       smallest_size_within_latency)
from qcompiler.quant.presets import load_config  # noqa: E402

from latency import publish, results_flag, timings  # noqa: E402
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


def bits_text(mixed) -> str:
    """A mixed-precision run's weight bits in graph order, as the tables print them ("" when uniform)."""
    return " ".join(str(b) for b in mixed.bits_of().values()) if mixed is not None else ""


def run(model: ir.Model, preset: str, calib, images, labels, budget: BitBudget | None, iters: int | None) -> dict:
    start = time.perf_counter()
    reconstruct = ReconstructConfig(iters=iters, samples=1024) if iters else None
    result = quantize(model.copy(), calib, load_config(None, preset, None, []), progress=False, bits=budget,
                      reconstruct=reconstruct)
    row = {"top1": top1(result.qdq, images, labels), "seconds": time.perf_counter() - start}
    if result.mixed is not None:
        a = result.mixed.assignment
        row.update(size=a.size, bits=bits_text(result.mixed),
                   mixed=result.mixed)
    return row


SEARCHES = (("genetic", lambda p: genetic_search(p, seed=0)), ("greedy", greedy_search),
            ("exact (integer program)", exact_search))


def search_rows(mixed) -> list[str]:
    """GA, greedy and exact on the same problem: summed sensitivity, size, seconds."""
    rows = []
    for name, search in SEARCHES:
        a = search(mixed.problem)
        rows.append(f"| {name} | {a.objective:.5g} | {a.size:,} | {a.seconds:.3f} |")
    return rows


def budget_search_rows(name: str, problem, size: int) -> list[str]:
    """The three searches on one model's latency problem under its latency budget, a size budget
    (`size` bytes) and both: objective, size, predicted latency, seconds."""
    rows = []
    for label, varied in (("latency", dataclasses.replace(problem, max_size=None)),
                          ("size", dataclasses.replace(problem, max_size=size, max_latency=None)),
                          ("both", dataclasses.replace(problem, max_size=size))):
        for method, search in SEARCHES:
            a = search(varied)
            if not varied.feasible(varied.index(a.bits)):
                raise SystemExit(f"{name}, {label} budget: the {method} search's answer is over budget")
            rows.append(f"| {name} | {label} | {a.method} | {a.objective:.5g} | {a.size:,} | {a.latency:.3f} | "
                        f"{a.seconds:.3f} |")
    return rows


def budgets(model: ir.Model, calib, scheme: str = "w4a8") -> list[tuple[str, int, str | None]]:
    """(label, size, uniform preset or None). Scheme w4a8: uniform 2-bit (the GA forced to every
    layer's fewest bits), a third and two thirds of the way to uniform 4-bit, uniform 4-bit, half
    way to uniform 8-bit, uniform 8-bit. Scheme w2a4 (4-bit activations): uniform W2A4, a third and
    two thirds of the way to 4-bit weights, uniform W4A4."""
    s2, s4 = uniform_size(model, "w2a4", calib), uniform_size(model, "w4a8", calib)
    between = [("mixed", s2 + (s4 - s2) // 3, None), ("mixed", s2 + 2 * (s4 - s2) // 3, None)]
    if scheme == "w2a4":
        return [("uniform W2A4 size", s2, "w2a4"), *between, ("uniform W4A4 size", s4, "w4a4")]
    s8 = uniform_size(model, "w8a8", calib)
    return [("uniform 2-bit size", s2, None), *between, ("uniform W4A8 size", s4, "w4a8"),
            ("mixed", (s4 + s8) // 2, None), ("uniform W8A8 size", s8, "w8a8")]


def built(model: ir.Model, preset: str, calib, workdir: Path, budget: BitBudget | None = None) -> dict:
    """Quantized (nearest rounding), compiled for native and loaded: top-1 comes later."""
    from qcompiler.compiler import compile as compile_model
    from qcompiler.runtime import load

    out = workdir / f"{preset}-{'ga' if budget else 'uniform'}"
    run = compile_model(model.copy(), calib, "native", output_dir=out, config=load_config(None, preset, None, []),
                        progress=False, bits=budget, check_samples=0)
    row = {"qdq": run.qdq, "library": load(out), "mixed": run.quantized.mixed, "float_model": run.quantized.float_model}
    if row["mixed"] is not None:
        row["bits"] = bits_text(row["mixed"])
    return row


def host_kernels() -> str:
    """What this CPU's convolutions run on, in a sentence: it decides whether fewer bits buy speed."""
    from qcompiler.backends.tvm.targets import native_target

    kernel = native_target().dot_kernel
    if kernel == "vnni":
        return ("This CPU has AVX-512 VNNI: convolutions run packed dot-product kernels, and 4- and 2-bit "
                "weights are unpacked into them, so fewer bits save bytes, not multiply-adds.")
    if kernel == "avx2":
        return ("This CPU has AVX2 but no AVX-512 VNNI: convolutions with 8-bit weights run exact vpmaddwd kernels "
                "(16 multiply-adds an instruction), those with 4- or 2-bit weights vpmaddubsw ones (32, exact for "
                "weights in [-8, 7]), so 4 bits save time as well as bytes, and 2 bits only bytes.")
    return ("On this CPU (no AVX2 or AVX-512 VNNI kernels) convolutions run TVM's generic int8 code whatever their "
            "bits: fewer bits buy no speed here.")


#: (scheme preset, the uniform libraries beside it): the GA's budget is the first one's median.
LATENCY_SCHEMES = (("w4a8", ("w4a8", "w8a8")), ("w2a4", ("w2a4",)))


def reference_latency(model: ir.Model, preset: str, calib) -> float:
    """The uniform `preset` library's median latency (ms) as `--max-latency` measures it: the search's
    reference library, timed once and cached, so that the search reads this same number back (two
    timings of one library on this shared machine differ by more than the kernels' differences)."""
    from qcompiler.backends.tvm.targets import get_target
    from qcompiler.data import load_data
    from qcompiler.driver import float_model, shapes_to_fix
    from qcompiler.mixed_precision import library_latency

    data = load_data(calib, model)
    prepared = float_model(model.copy(), shapes_to_fix(model, None, data.arrays))
    return library_latency(prepared, load_config(None, preset, None, []), data, get_target("native"))[0]


def latency_rows(model: ir.Model, calib, folder: Path) -> dict:
    """Per scheme: the uniform libraries, then the GA's at the first one's measured median."""
    rows = {}
    for scheme, uniforms in LATENCY_SCHEMES:
        for preset in uniforms:
            rows[f"uniform {preset.upper()}"] = built(model, preset, calib, folder) | {"preset": preset}
        budget = BitBudget(max_latency=reference_latency(model, scheme, calib), target="native")
        rows[f"GA ({scheme} scheme) at {scheme.upper()}'s latency"] = built(model, scheme, calib, folder, budget) \
            | {"bit_budget": budget, "preset": scheme}
    return rows


def timed_latency_rows(name: str, model: ir.Model, calib, x: dict, runs: int) -> tuple[dict, list[str]]:
    """latency_rows, each library timed (runs taking turns) into its row, and the w4a8 GA's problem
    searched under its latency budget, a size budget that binds and both (budget_search_rows)."""
    with tempfile.TemporaryDirectory() as folder:
        rows = latency_rows(model, calib, Path(folder))
        ga = rows["GA (w4a8 scheme) at W4A8's latency"]["mixed"]
        # a size budget that binds: 2/3 of the way from the fewest bytes within the latency budget
        # (fewer bits can run slower, so the fewest bytes of all may not be) to the GA's own answer
        problem = ga.problem
        fewest = smallest_size_within_latency(problem)
        searches = budget_search_rows(name, problem, fewest + 2 * (ga.assignment.size - fewest) // 3)
        measured = timings({label: (lambda r=r: r["library"].run(x)) for label, r in rows.items()}, runs)
    for label, row in rows.items():
        row["median"], row["p10"], row["p90"] = measured[label]
        print(name, label, row["median"], flush=True)
    return rows, searches


def latency_cells(row: dict) -> str:
    """budget, predicted, measured median, p10-p90 and bits cells of a latency_rows row."""
    mixed = row["mixed"]
    predicted = f"{mixed.assignment.latency:.3f}" if mixed else ""
    budget = f"{row['bit_budget'].max_latency:.3f}" if "bit_budget" in row else ""
    return f"{budget} | {predicted} | {row['median']:.3f} | {row['p10']:.3f}-{row['p90']:.3f} | {row.get('bits', '')} |"


def reconstructed_top1(model: ir.Model, row: dict, calib, images, labels, iters: int) -> str:
    """The row's library again with BRECQ: the same preset, and for the GA the same budget, whose
    search reads the same cached latencies and so returns the same bits (checked)."""
    again = run(model, row["preset"], calib, images, labels, row.get("bit_budget"), iters)
    require_same_bits(again.get("bits", ""), row)
    return f"{100 * again['top1']:.2f}"


def require_same_bits(bits: str, row: dict) -> None:
    """A library rebuilt for BRECQ must have the row's bits (so its kernels and latency are the
    row's): the search reads the same cached sensitivities and latencies."""
    if bits != row.get("bits", ""):
        raise SystemExit(f"the GA chose other bits the second time: {bits} != {row.get('bits')}")


def imagenet_reconstruct(args) -> ReconstructConfig:
    """BRECQ as the ImageNet parts run it: `--iters`, rounding regulariser 0.1 (the authors'
    MobileNetV2 setting), every calibration crop."""
    return ReconstructConfig(iters=args.iters, reg_weight=0.1, samples=args.calib)


SEARCH_BUDGETS_SECTION = [
    "", "## The searches under one budget and both", "",
    "The w4a8 GA's problem above (sensitivities, native weight bytes, measured kernel latencies) under its latency "
    "budget alone, a size budget alone (two thirds of the way from the fewest bytes reachable within the latency "
    "budget to the GA's answer, so that "
    "it binds) and both: summed sensitivity (lower is better), size, predicted latency and the search's time. The "
    "exact search is an integer program (HiGHS): the optimum.", "",
    "| model | budget | search | summed sensitivity | size (bytes) | predicted (ms) | seconds |",
    "|---|---|---|---|---|---|---|"]


def latency_method(runs: int) -> str:
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, one thread, batch 1, target native. "
            "In each scheme (w4a8: 8-bit activations; w2a4: 4-bit activations; first and last layer 8-bit) the GA's "
            "budget is the uniform library's median latency as the search measures it (its reference library, 50 "
            "runs, read back from the cache by the search); its prediction is the reference library's rest plus its "
            "kernels timed alone (measured in this run, no cache; docs/mixed_precision.md); then all libraries are "
            f"timed again, taking turns, {runs} runs each (median, 10th-90th percentile). {host_kernels()}")


def fresh_cache() -> None:
    """Fresh latency measurements, not a table cached in another state of this machine."""
    os.environ["QCOMPILER_CACHE"] = tempfile.mkdtemp(prefix="qcompiler-bench-cache-")


def latency_part(args, calib, images, labels) -> None:
    fresh_cache()
    iters = f" --iters {args.iters}" if args.iters else " --iters 0"
    results = args.results or RESULTS / "mixed_latency.md"
    lines = ["# Mixed precision at equal measured latency", "",
             f"`python benchmarks/mixed_precision.py --part latency --runs {args.runs}{iters}"
             f"{results_flag(results, RESULTS / 'mixed_latency.md')}`; "
             f"{latency_method(args.runs)} Top-1 (%) on the 10,000 Fashion-MNIST test images, calibrated on "
             f"{args.calib} training images, with nearest rounding (the libraries timed)"
             + (f" and with BRECQ ({args.iters} rounding iterations per block; the same bits, so the same kernels "
                "and latency)." if args.iters else "; no BRECQ column (--iters 0)."), "",
             "| model | library | top-1 (nearest / BRECQ) | budget (ms) | predicted (ms) | measured median (ms) | p10-p90 "
             "| bits (graph order) |", "|---|---|---|---|---|---|---|---|"]
    searches = []
    for name in args.models:
        model = ir.load(models.path(f"{name}.onnx"))
        rows, found = timed_latency_rows(name, model, calib, {"input": images[:1]}, args.runs)
        searches += found
        for label, row in rows.items():
            top1s = [f"{100 * top1(row['qdq'], images, labels):.2f}"]
            if args.iters:
                top1s.append(reconstructed_top1(model, row, calib, images, labels, args.iters))
            print(name, label, top1s, flush=True)
            lines.append(f"| {name} | {label} | {' / '.join(top1s)} | {latency_cells(row)}")
    publish("\n".join(lines + SEARCH_BUDGETS_SECTION + searches) + "\n", results)


def imagenet_latency_part(args) -> None:
    """--part latency on the ImageNet MobileNetV2, nearest rounding, and with `--iters` BRECQ on the
    w4a8 scheme's libraries (uniform W4A8 and the GA's mix: the same bits, so the same kernels and
    latency): agreement, not top-1 on 10,000."""
    from ptq_accuracy import imagenet_data, measure

    fresh_cache()
    calib, labelled, agreement = imagenet_data(args.calib)
    name = "mobilenet_v2_imagenet"
    model = ir.load(models.path(f"{name}.onnx"))
    results = args.results or RESULTS / "mixed_imagenet_latency.md"
    reconstruct = imagenet_reconstruct(args) if args.iters else None
    brecq = (f" The w4a8 scheme's libraries again with {reconstruct.describe()} (rounding regulariser 0.1, as in "
             "mixed_imagenet_brecq.md), then bias correction where it raises the output's SQNR: the same bits, so "
             "the same kernels and latency." if reconstruct else "")
    lines = ["# Mixed precision on the ImageNet MobileNetV2 at equal measured latency", "",
             f"`python benchmarks/mixed_precision.py --part imagenet-latency --calib {args.calib} --runs {args.runs}"
             f"{f' --iters {args.iters}' if args.iters else ''}"
             f"{results_flag(results, RESULTS / 'mixed_imagenet_latency.md')}`; "
             f"{latency_method(args.runs)} torchvision's MobileNetV2 with its ImageNet weights, calibrated on "
             f"{args.calib} random crops of the opencv-doc photos, nearest rounding with bias correction; top-1 on "
             "foolbox's 20 labelled ImageNet samples (one image is 5 points), agreement with the float model's "
             f"top-1 and KL on 54 held-out photos: not ImageNet accuracy.{brecq}", "",
             "| library | top-1 (20) | agreement (54) | KL | budget (ms) | predicted (ms) | measured median (ms) | "
             "p10-p90 | bits (graph order) |", "|---|---|---|---|---|---|---|---|---|"]
    rows, searches = timed_latency_rows(name, model, calib, {"input": calib["input"][:1]}, args.runs)
    for label, row in rows.items():
        scores = measure(row["float_model"], row["qdq"], [labelled, agreement])
        print(label, scores, flush=True)
        lines.append(f"| {label} | {100 * scores['top1']:.0f} | {100 * scores['agreement']:.1f} | "
                     f"{scores['kl']:.4f} | {latency_cells(row)}")
        if reconstruct and row["preset"] == "w4a8":
            lines.append(reconstructed_imagenet_row(model, label, row, calib, [labelled, agreement], reconstruct))
    publish("\n".join(lines + SEARCH_BUDGETS_SECTION + searches) + "\n", results)


def reconstructed_imagenet_row(model: ir.Model, label: str, row: dict, calib, evals: list,
                               reconstruct: ReconstructConfig) -> str:
    """The row's library again with BRECQ, as a table row: the GA's budget reads the same cached
    latencies and so gives the same bits (checked), whose kernels the row above timed."""
    scores, seconds, result = imagenet_run(model, calib, evals, row["preset"], row.get("bit_budget"), reconstruct)
    bits = bits_text(result.mixed)
    require_same_bits(bits, row)
    print(label, f"BRECQ {reconstruct.iters}", scores, f"{seconds:.0f} s", flush=True)
    return (f"| {label}, BRECQ {reconstruct.iters} ({seconds:.0f} s) | {100 * scores['top1']:.0f} | "
            f"{100 * scores['agreement']:.1f} | {scores['kl']:.4f} | as above | | | | {bits} |")


SCHEME_ACTIVATIONS = {"w4a8": "8-bit", "w2a4": "4-bit"}


def size_part(args, scheme: str, calib, images, labels) -> None:
    """The GA against uniform weights at the budgets of `budgets(scheme)`, nearest and BRECQ."""
    activations = SCHEME_ACTIVATIONS[scheme]
    lines = [f"# Mixed precision: GA bit widths against uniform weights, by size ({scheme} scheme)", "",
             f"`python benchmarks/mixed_precision.py --scheme {scheme} --iters {args.iters}`; "
             f"{platform.processor() or platform.machine()},"
             f" {os.cpu_count()} cores. Top-1 (%) on the 10,000 Fashion-MNIST test images, calibrated on {args.calib} "
             f"training images. Scheme {scheme}: {activations} activations, first and last layer 8-bit, the other layers' weights "
             f"2, 4 or 8 bits as the GA (seed 0, population 50, at most 100 generations) picks them under the size "
             f"budget: weight bytes as the {TARGET} library stores them. At the uniform 2-bit size the GA has no "
             "choice but 2 bits for the convolutions; depthwise layers store 2- and 4-bit weights alike (two to "
             "a byte), so there it takes 4 at no cost. BRECQ: block reconstruction with "
             f"{args.iters} rounding iterations per block (the authors use 20,000). Sensitivities: Fisher-weighted "
             "block output errors on 128 calibration samples.", "",
             "| model | budget (bytes) | point | uniform top-1 (nearest / BRECQ) | GA top-1 (nearest / BRECQ) | "
             "GA size | GA bits (graph order) |", "|---|---|---|---|---|---|---|"]
    for name in args.models:
        model = ir.load(models.path(f"{name}.onnx"))
        for label, size, preset in budgets(model, calib, scheme):
            budget = BitBudget(max_size=size, target=TARGET)
            mixed = [run(model, scheme, calib, images, labels, budget, iters) for iters in (None, args.iters)]
            uniform = [run(model, preset, calib, images, labels, None, iters) for iters in (None, args.iters)] \
                if preset else None
            shown = " / ".join(f"{100 * r['top1']:.2f}" for r in uniform) if uniform else ""
            print(name, size, label, shown, [r["top1"] for r in mixed], flush=True)
            lines.append(f"| {name} | {size:,} | {label} | {shown} | "
                         f"{' / '.join(format(100 * r['top1'], '.2f') for r in mixed)} | "
                         f"{mixed[0]['size']:,} | {mixed[0]['bits']} |")
    lines += ["", "The three searches on the mixed budgets' problems: [mixed_searches.md](mixed_searches.md) (`--part "
              "searches`). At equal measured latency: [mixed_latency.md](mixed_latency.md) (`--part latency`). The "
              "ImageNet MobileNetV2: [mixed_imagenet.md](mixed_imagenet.md) (`--part imagenet`)."]
    publish("\n".join(lines) + "\n", RESULTS / ("mixed.md" if scheme == "w4a8" else f"mixed_{scheme}.md"))


def imagenet_run(model: ir.Model, calib, evals: list, preset: str, budget: BitBudget | None,
                 reconstruct: ReconstructConfig | None = None) -> tuple[dict, float, object]:
    """Quantize the ImageNet MobileNetV2 (progress shown when it reconstructs: that takes a while) and
    measure it on `evals` (ptq_accuracy.measure): (scores, seconds of quantization, the run)."""
    from ptq_accuracy import measure

    start = time.perf_counter()
    result = quantize(model.copy(), calib, load_config(None, preset, None, []), progress=reconstruct is not None,
                      bits=budget, reconstruct=reconstruct)
    seconds = time.perf_counter() - start
    return measure(result.float_model, result.qdq, evals), seconds, result


def imagenet_part(args) -> None:
    """The ImageNet MobileNetV2 at the size budgets of both schemes, nearest rounding (BRECQ takes
    hours on a 2-core CPU): top-1 on foolbox's 20 labelled samples, agreement and KL with the float
    model on 54 held-out photos (not ImageNet accuracy)."""
    from ptq_accuracy import imagenet_data

    calib, labelled, agreement = imagenet_data(args.calib)
    model = ir.load(models.path("mobilenet_v2_imagenet.onnx"))
    lines = ["# Mixed precision on the ImageNet MobileNetV2", "",
             f"`python benchmarks/mixed_precision.py --part imagenet --calib {args.calib}`; "
             f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores. torchvision's MobileNetV2 with "
             f"its ImageNet weights, calibrated on {args.calib} random crops of the opencv-doc photos "
             "(benchmarks/ptq_accuracy.py), nearest rounding with bias correction (BRECQ takes hours on this CPU). "
             "Top-1 on foolbox's 20 labelled ImageNet samples (one image is 5 points); agreement (top-1 "
             "of the quantized model equal to the float model's) and KL on 54 held-out photos (those 20 and "
             "26 others): not ImageNet accuracy. Weight bytes as the arm64-dotprod library stores them; "
             "the GA (seed 0) picks 2, 4 or 8 bits per layer, first and last layer 8-bit; sensitivities on "
             "128 calibration crops.", "",
             "| scheme | budget (bytes) | point | library | top-1 (20) | agreement (54) | KL | size | seconds | bits |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for scheme in SCHEME_ACTIVATIONS:
        for label, size, preset in budgets(model, calib, scheme):
            entries = [("GA", scheme, BitBudget(max_size=size, target=TARGET))] + \
                ([(f"uniform {preset.upper()}", preset, None)] if preset else [])
            for library, chosen, budget in entries:
                row, seconds, result = imagenet_run(model, calib, [labelled, agreement], chosen, budget)
                mixed, bits = result.mixed, bits_text(result.mixed)
                print(scheme, label, library, row, flush=True)
                lines.append(f"| {scheme} | {size:,} | {label} | {library} | {100 * row['top1']:.0f} | "
                             f"{100 * row['agreement']:.1f} | {row['kl']:.4f} | "
                             f"{f'{mixed.assignment.size:,}' if mixed else f'{size:,}'} | {seconds:.0f} | {bits} |")
    publish("\n".join(lines) + "\n", RESULTS / "mixed_imagenet.md")


def imagenet_brecq_part(args) -> None:
    """The ImageNet MobileNetV2 at the uniform preset's size, nearest and with BRECQ at `--iters`
    iterations per block (the authors' 20,000 take days on a 2-core CPU): the uniform library and
    the GA's mix at its size (with 4-bit activations nearest rounding leaves nothing of either,
    mixed_imagenet.md; each BRECQ run costs about 20 minutes here)."""
    from ptq_accuracy import imagenet_data

    calib, labelled, agreement = imagenet_data(args.calib)
    model = ir.load(models.path("mobilenet_v2_imagenet.onnx"))
    preset = args.scheme
    size = uniform_size(model, preset, calib)
    reconstruct = imagenet_reconstruct(args)
    lines = [f"# BRECQ and the GA on the ImageNet MobileNetV2 at uniform "
             f"{preset.upper()}'s size", "",
             f"`python benchmarks/mixed_precision.py --part imagenet-brecq --scheme {preset} --iters {args.iters} "
             f"--calib {args.calib}`; {platform.processor() or platform.machine()}, {os.cpu_count()} cores. As in "
             "[mixed_imagenet.md](mixed_imagenet.md) (the same crops, held-out photos and budget: "
             f"{size:,} bytes as the {TARGET} library stores the weights), plus {reconstruct.describe()} "
             "(rounding regulariser 0.1, the authors' MobileNetV2 setting; they run 20,000+5,000), then bias "
             "correction, kept only where it raises the output's SQNR on the calibration crops (the quantize "
             "default): not ImageNet accuracy.", "",
             "| library | rounding | top-1 (20) | agreement (54) | KL | size | seconds | block output error on the "
             "calibration crops, nearest -> learned (sum) | bias correction after it: output SQNR without -> with "
             "(dB) | bits (graph order) |", "|---|---|---|---|---|---|---|---|---|---|"]
    libraries = [(f"uniform {preset.upper()}", None), ("GA", BitBudget(max_size=size, target=TARGET))]
    for library, budget in libraries:
        for rounding, chosen in (("nearest", None), (f"BRECQ {args.iters}", reconstruct)):
            row, seconds, result = imagenet_run(model, calib, [labelled, agreement], preset, budget, chosen)
            mixed = result.mixed
            print(library, rounding, row, f"{seconds:.0f} s", flush=True)
            blocks = result.qdq.analysis.get("reconstruct-blocks", [])
            errors = (f"{sum(b.loss_nearest for b in blocks):.4g} -> {sum(b.loss_learned for b in blocks):.4g}"
                      if blocks else "")
            check = result.bias_check
            kept = "" if not check else f"{check[0]:.2f} -> {check[1]:.2f} ({'kept' if result.bias_shifts else 'not kept'})"
            lines.append(f"| {library} | {rounding} | {100 * row['top1']:.0f} | {100 * row['agreement']:.1f} | "
                         f"{row['kl']:.4f} | {mixed.assignment.size if mixed else size:,} | {seconds:.0f} | {errors} | "
                         f"{kept} | {bits_text(mixed)} |")
    name = "mixed_imagenet_brecq.md" if preset == "w4a8" else f"mixed_imagenet_brecq_{preset}.md"
    publish("\n".join(lines) + "\n", RESULTS / name)


def searches_part(args, calib) -> None:
    """GA, greedy and exact on the w4a8 size problems of the "mixed" budgets (sensitivities and
    sizes measured once per model, then each search on the same problem)."""
    from qcompiler.data import load_data
    from qcompiler.driver import float_pipeline
    from qcompiler.mixed_precision import plan
    from qcompiler.pass_infra import PassManager

    lines = ["# Mixed precision: the three searches on the same problems", "",
             f"`python benchmarks/mixed_precision.py --part searches`; {platform.processor() or platform.machine()}, "
             f"{os.cpu_count()} cores. The w4a8 scheme's problems at the \"mixed\" size budgets of "
             "[mixed.md](mixed.md) and [mixed_imagenet.md](mixed_imagenet.md): sensitivities (Fisher-weighted "
             f"block output errors, pair terms inside blocks, 128 of the {args.calib} Fashion-MNIST calibration images "
             f"or of the ImageNet MobileNetV2's 512 crops) and {TARGET} weight bytes, measured once per model. Summed "
             "sensitivity (the objective, pair terms included; lower is better) of the assignment each search "
             "returns, its size, and the search's time. The exact search is an integer program (HiGHS, "
             "scipy.optimize.milp) over the whole objective: the optimum the others are measured against.", ""]
    config = load_config(None, "w4a8", None, [])
    for name in [*args.models, "mobilenet_v2_imagenet"]:
        model = PassManager(float_pipeline(None))(ir.load(models.path(f"{name}.onnx"))).model
        if name == "mobilenet_v2_imagenet":   # the calibration crops of --part imagenet
            from ptq_accuracy import calibration_crops

            calib = {"input": calibration_crops(512)[0]}
        data = load_data(calib, model, what="calibration")
        for label, size, _ in budgets(model, calib, "w4a8"):
            if label != "mixed":
                continue
            mixed = plan(model, config, data, BitBudget(max_size=size, target=TARGET), progress=False)
            print(name, size, flush=True)
            lines += [f"**{name}, budget {size:,} bytes, {len(mixed.problem.layers)} searched layers**", "",
                      "| search | summed sensitivity | size (bytes) | seconds |", "|---|---|---|---|",
                      *search_rows(mixed), ""]
    publish("\n".join(lines), RESULTS / "mixed_searches.md")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=["size", "latency", "imagenet", "imagenet-latency", "imagenet-brecq",
                                                        "searches"], default="size")
    parser.add_argument("--scheme", choices=list(SCHEME_ACTIVATIONS), default="w4a8",
                        help="--part size and imagenet-brecq: the activations' bits (w4a8: 8, w2a4: 4) (default: %(default)s)")
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--iters", type=int, help="BRECQ iterations per block (the authors: 20000; default 1000, "
                        "none for --part imagenet-latency); 0: nearest rounding only (--part latency, imagenet-latency)")
    parser.add_argument("--calib", type=int, help="calibration samples (default: 1024 Fashion-MNIST training "
                        "images; 512 crops for --part imagenet)")
    parser.add_argument("--runs", type=int, default=200, help="timed runs per library (--part latency)")
    parser.add_argument("--results", type=Path, help="--part latency and imagenet-latency: the table's file "
                        "(default: results/mixed_latency.md, results/mixed_imagenet_latency.md; another host's: "
                        "results/mixed_latency_avx2.md)")
    args = parser.parse_args()
    if args.iters is None and args.part != "imagenet-latency":
        args.iters = 1000
    if args.part.startswith("imagenet"):
        args.calib = args.calib or 512
        parts = {"imagenet": imagenet_part, "imagenet-latency": imagenet_latency_part,
                 "imagenet-brecq": imagenet_brecq_part}
        return parts[args.part](args)
    args.calib = args.calib or 1024
    calib, images, labels = fashion(args.calib)
    if args.part == "latency":
        return latency_part(args, calib, images, labels)
    if args.part == "searches":
        return searches_part(args, calib)
    size_part(args, args.scheme, calib, images, labels)


if __name__ == "__main__":
    main()
