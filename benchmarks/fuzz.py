"""Fuzzing: random small float graphs (tests/fuzz_graphs.py: Conv of every shape, Gemm, MatMul,
Add, Mul, Concat, pools, Resize, Relu/Clip/HardSwish) with a random preset and seeded random
calibration data, each quantized and compiled for this host, the library checked against its
QDQ model in onnxruntime.

    python benchmarks/fuzz.py [--count 1000] [--seed 0] [--max-layers 3]   # writes benchmarks/results/fuzz.md
    python benchmarks/fuzz.py --seed 0 --only 29                           # one case again, writes nothing

About 4 s a graph on one core (two compiles each): 50 graphs 3.5 minutes, 1000 about 70.

Per graph: its ops and input shape, the preset, the compile time (qcompiler.compile: quantize,
build, write, check), the largest difference end to end (built.fidelity, in LSBs of the output
scale) and per layer (the QDQ model cut at its quantizers, every layer fed the reference's
inputs: the contract, at most 1 LSB), or the exception. Outcomes: ok; disagree (a layer over
1 LSB, or a float output beyond float rounding); refused (UnsupportedModelError, on purpose);
error (another QCompilerError); crash (any other exception). Every disagreement, error and
crash is saved under benchmarks/results/fuzz_found/ as model.onnx, calib.npz and case.txt
(with the command that compiles it).

The graphs come from the same builders as the hypothesis strategies, each choice uniform from
a generator seeded by (--seed, case index): every case is independent of the others, and
`--only INDEX` rebuilds and checks one case alone. Nothing is shrunk.
"""

from __future__ import annotations

import os

os.environ.setdefault("TVM_NUM_THREADS", "1")  # before tvm starts its thread pool

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from collections import Counter  # noqa: E402
from pathlib import Path  # noqa: E402

import onnxruntime  # noqa: E402

import qcompiler  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
import fuzz_graphs  # noqa: E402  (tests/fuzz_graphs.py: the strategies and the per-layer check)

RESULTS = Path(__file__).resolve().parent / "results" / "fuzz.md"
FOUND = RESULTS.parent / "fuzz_found"
FINDINGS = ("disagree", "error", "crash")


@dataclasses.dataclass
class Record:
    index: int
    preset: str
    input_shape: tuple
    ops: list
    layers: str
    status: str
    compile_s: float
    end_to_end: float | None       # LSB, quantized outputs (None: none, or it did not compile)
    end_to_end_float: float | None  # float outputs, in units of their largest magnitude
    worst_layer: float | None      # LSB, each layer fed the reference's inputs
    worst_where: str
    float_rel: float | None        # float outputs, in units of their largest magnitude
    error: str
    saved: str = ""                # the reproducer's folder, relative to the results


def record(index: int, case: fuzz_graphs.FuzzCase, outcome: fuzz_graphs.Outcome) -> Record:
    def value(worst):   # None where there is no such output, or nothing was compared
        return worst.value if worst is not None and worst.where else None

    return Record(index, case.preset, case.input_shape, case.ops, " -> ".join(case.layers), outcome.status,
                  outcome.compile_s, value(outcome.end_to_end), value(outcome.end_to_end_float), value(outcome.layers),
                  outcome.layers.where if outcome.layers else "", value(outcome.floats),
                  outcome.error.splitlines()[0][:200] if outcome.error else "")


def outcome_label(r: Record) -> str:
    """The status, with ok split where a near-tie grew past 1 LSB end to end (each layer within it)."""
    if r.status == "ok" and r.end_to_end is not None and r.end_to_end > fuzz_graphs.LSB_TOLERANCE:
        return "ok (end to end > 1 LSB, every layer <= 1)"
    return r.status


def _number(value: float | None, digits: str = ".2f") -> str:
    return "-" if value is None else format(value, digits)


def row(r: Record) -> str:
    shape = "x".join(map(str, r.input_shape))
    result = r.error.replace("|", "\\|") if r.status in ("refused", "error", "crash") else (
        f"{r.worst_layer:.2f} ({r.worst_where})" if r.worst_layer is not None else "- (float outputs only)")
    end_to_end = _number(r.end_to_end) if r.end_to_end is not None or r.end_to_end_float is None else \
        f"{r.end_to_end_float:.2g} of range"
    return (f"| {r.index} | {r.preset} | {shape} | {', '.join(sorted(set(r.ops)))} | {r.status} | {r.compile_s:.1f} | "
            f"{end_to_end} | {result} | {_number(r.float_rel, '.2g')} |")


HEADER = ["| # | preset | input | ops | outcome | compile s | end to end LSB | worst layer LSB (fed the reference) "
          "| float outputs, fed the reference (of range) |", "|---|---|---|---|---|---|---|---|---|"]


def counts_table(records: list[Record], key, title: str) -> str:
    """Graphs per `key` value (an op: graphs containing it) and outcome."""
    labels = sorted({outcome_label(r) for r in records})
    by: dict[str, Counter] = {}
    for r in records:
        for value in key(r):
            by.setdefault(value, Counter())[outcome_label(r)] += 1
    lines = [f"| {title} | graphs | " + " | ".join(labels) + " |", "|---" * (len(labels) + 2) + "|"]
    for value in sorted(by):
        cells = " | ".join(str(by[value][label]) for label in labels)
        lines.append(f"| {value} | {sum(by[value].values())} | {cells} |")
    return "\n".join(lines)


def run(indices, seed: int, max_layers: int, work: Path) -> list[Record]:
    """Check case `index` of `seed` for each index; save the findings' reproducers."""
    records: list[Record] = []
    for index in indices:
        case = fuzz_graphs.seeded_case(seed, index, max_layers)
        outcome = fuzz_graphs.check(case, work / str(index))
        records.append(record(index, case, outcome))
        if outcome.status in FINDINGS:
            folder = FOUND / f"{index:04d}-{outcome.status}"
            case.save(folder)
            (folder / "outcome.txt").write_text(f"{outcome.line()}\n\n{outcome.error}\n")
            records[-1].saved = str(folder.relative_to(RESULTS.parent))
        shutil.rmtree(work / str(index), ignore_errors=True)   # a thousand libraries add up
        print(row(records[-1]), flush=True)
    return records


def _differences(r: Record) -> str:
    parts = [] if r.worst_layer is None else [f"worst layer {r.worst_layer:.2f} LSB at `{r.worst_where}`, "
                                              f"end to end {_number(r.end_to_end)} LSB"]
    if r.float_rel is not None:
        parts.append(f"float outputs {r.float_rel:.2g} of their largest magnitude")
    return ", ".join(parts)


def report(records: list[Record], args) -> str:
    from qcompiler.backends.tvm.targets import native_target

    outcomes = Counter(outcome_label(r) for r in records)
    compiled = [r.compile_s for r in records if r.status not in ("refused",)]
    found = [r for r in records if r.status in FINDINGS]
    text = [
        "# Fuzzing: random graphs through quantize, compile and run",
        "",
        f"`python benchmarks/fuzz.py --count {args.count} --seed {args.seed} --max-layers {args.max_layers}` on "
        f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores; {native_target().description}), "
        f"Python {platform.python_version()}, qcompiler {qcompiler.__version__}, "
        f"onnxruntime {onnxruntime.__version__}. "
        f"Graphs from tests/fuzz_graphs.py: 1 to {args.max_layers} layers on an input [1, C, H, W], C and H, W in "
        "1..16, the first layer with weights; a preset drawn from all of qcompiler's; 8 seeded random calibration "
        "inputs, which are also the check's inputs (`seeded_case`: case i of a seed is always the same graph, "
        f"`python benchmarks/fuzz.py --seed {args.seed} --only i` checks it alone). end to end: the library "
        "as compiled against the QDQ model as written in onnxruntime, in LSBs of each quantized output's scale "
        "(built.fidelity). worst: each layer fed the reference's inputs (the QDQ model cut at its activation "
        "quantizers, compiled once): the contract is at most 1 LSB, and a float output (weight-only presets, a "
        f"float op last) within {fuzz_graphs.FLOAT_TOLERANCE:g} of its largest magnitude. compile s: qcompiler.compile "
        "(quantize, build, write, check).",
        "",
        "## Outcomes",
        "",
        "| outcome | graphs |", "|---|---|",
        *(f"| {label} | {n} |" for label, n in sorted(outcomes.items())),
        f"| all | {len(records)} |",
        "",
        f"Compile seconds: median {statistics.median(compiled):.1f}, max {max(compiled):.1f}, "
        f"total {sum(compiled) / 60:.1f} min." if compiled else "",
        "",
        "## By op (graphs containing it)",
        "",
        counts_table(records, lambda r: set(r.ops), "op"),
        "",
        "## By preset",
        "",
        counts_table(records, lambda r: [r.preset], "preset"),
        "",
        "## Disagreements, errors and crashes",
        "",
    ]
    if not found:
        text.append("None.")
    for r in found:
        text += [f"- #{r.index} **{r.status}** ({r.preset}, input {list(r.input_shape)}): {r.layers}. "
                 + (r.error or _differences(r))
                 + f". Reproducer: `{r.saved}/` (model.onnx, calib.npz, case.txt)."]
    text += ["", "## Every graph", "", *HEADER, *(row(r) for r in records), ""]
    return "\n".join(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000, help="graphs to draw and check")
    parser.add_argument("--seed", type=int, default=0,
                        help="the run's seed (case i of a seed is always the same graph)")
    parser.add_argument("--max-layers", type=int, default=3, help="layers per graph, at most")
    parser.add_argument("--only", type=int, nargs="+", metavar="INDEX",
                        help="check only these cases of the seed, print their outcome and write nothing")
    args = parser.parse_args()
    if args.only:
        for index in args.only:
            case = fuzz_graphs.seeded_case(args.seed, index, args.max_layers)
            with tempfile.TemporaryDirectory() as tmp:
                print(f"#{index} {case.describe()}\n    {fuzz_graphs.check(case, Path(tmp)).line()}", flush=True)
        return
    shutil.rmtree(FOUND, ignore_errors=True)   # the reproducers of this run only
    print("\n".join(HEADER), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        records = run(range(1, args.count + 1), args.seed, args.max_layers, Path(tmp))
    RESULTS.write_text(report(records, args))
    print("\n" + "\n".join(f"{label}: {n}" for label, n in sorted(Counter(map(outcome_label, records)).items())))
    print(f"wrote {RESULTS}" + (f" and reproducers under {FOUND}" if FOUND.exists() else ""))


if __name__ == "__main__":
    main()
