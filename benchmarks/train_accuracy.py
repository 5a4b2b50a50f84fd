"""Training accuracy: float, nearest rounding, BRECQ, QAT, QIL joint and QIL intervals-only at
W4A4, W3A3 and W2A2 on the Fashion-MNIST nets, trained with labels and by distillation.

    apt-get install dataset-fashion-mnist
    pip install -e .
    python benchmarks/train_accuracy.py                       # writes benchmarks/results/train.md
    python benchmarks/train_accuracy.py --models fashion_resnet8 --presets w4a4 --train-count 8192

Protocol: calibration on 1024 training images (seed 0); "labels" runs train with cross-entropy on
`--train-count` training images (default all 60,000) for `--epochs`; "distill" runs train on
`--distill-count` unlabelled training images (default 1,024) by KL from the float model, for
`--distill-epochs`. Every number is top-1 of the exported QDQ model in onnxruntime on all
10,000 test images. Each run is kept in benchmarks/results/train.<model>.json (a run already
there is not repeated unless --fresh), and the table is rendered from those files.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "2")

from qcompiler import models  # noqa: E402
from qcompiler.blocks import ReconstructConfig  # noqa: E402
from qcompiler.driver import quantize  # noqa: E402
from qcompiler.models.datasets import load_fashion_mnist  # noqa: E402
from qcompiler.quant.presets import load_config  # noqa: E402
from qcompiler.training import QATConfig, QILConfig  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = ("fashion_resnet8", "fashion_mobilenetv2")
PRESETS = ("w4a4", "w3a3", "w2a2")
TRAINED = {"qat": QATConfig, "qil": QILConfig, "qil-intervals": lambda **kw: QILConfig(intervals_only=True, **kw)}
METHODS = ("float", "nearest", "brecq", *(f"{m} {t}" for t in ("labels", "distill") for m in TRAINED))


def top1(model, images: np.ndarray, labels: np.ndarray) -> float:
    from qcompiler.executor import session

    runner = session(model, threads=1, optimize=False)  # the QDQ model as written
    predictions = np.concatenate([np.argmax(runner.run(None, {"input": images[i:i + 1000]})[0], axis=1)
                                  for i in range(0, len(images), 1000)])
    return float(np.mean(predictions == labels))


def _planned(method: str, args) -> dict:
    """The training samples and epochs a method runs with (0, 0 for the untrained ones)."""
    if method in ("float", "nearest", "brecq"):
        return {"train_count": 0, "epochs": 0}
    labelled = method.endswith("labels")
    stages = {"progressive": list(args.progressive)} if args.progressive and not method.startswith("qat") else {}
    return {"train_count": args.train_count if labelled else args.distill_count,
            "epochs": args.epochs if labelled else args.distill_epochs, **stages}


def run_one(name: str, preset: str, method: str, args, data) -> dict:
    train_x, train_y, test_x, test_y, calib = data
    path = Path(models.__file__).parent / f"{name}.onnx"
    start, options, epochs = time.perf_counter(), {}, 0
    if method == "brecq":
        options["reconstruct"] = ReconstructConfig(iters=args.brecq_iters)
    elif method not in ("float", "nearest"):
        kind, target = method.split()
        labelled = target == "labels"
        count = args.train_count if labelled else args.distill_count
        epochs = args.epochs if labelled else args.distill_epochs
        stages = {"progressive": tuple(args.progressive)} if args.progressive and kind != "qat" else {}
        options["train"] = TRAINED[kind](epochs=epochs, labels=labelled, seed=0, **stages)
        options["train_data"] = {"input": train_x[:count], **({"labels": train_y[:count]} if labelled else {})}
    run = quantize(path, calib, load_config(None, preset, None, []), progress=not args.no_progress, **options)
    model = run.float_model if method == "float" else run.qdq
    return {"model": name, "preset": preset, "method": method, "top1": top1(model, test_x, test_y),
            "epochs": epochs, "seconds": round(time.perf_counter() - start, 1),
            "train_count": len(options["train_data"]["input"]) if "train_data" in options else 0,
            **({"progressive": list(options["train"].progressive)} if "train" in options and
               options["train"].progressive else {}), **({"note": args.note} if args.note else {})}


def render(runs: list[dict], args) -> str:
    lines = ["# Training accuracy: nearest rounding, BRECQ, QAT, QIL", "",
             "Fashion-MNIST, top-1 (%) of the exported QDQ model in onnxruntime on all 10,000 test images "
             "(difference from float in brackets). Calibration: 1024 training images (seed 0). First and last layer "
             "8-bit, as in the other low-bit presets. *labels*: cross-entropy on the first N training images; "
             "*distill*: KL from the float model on the first N training images, without their labels. "
             "Columns name the training images (k = 1024) and epochs. "
             f"BRECQ: block granularity, {args.brecq_iters} iterations per block. Defaults: batch 64, Adam, "
             "lr 1e-4 (weights) and 5e-3 (intervals, step sizes; relative), 5% warm-up then cosine decay.", "",
             f"Machine: {platform.machine()}, {os.cpu_count()} cores. The runs come from several invocations that "
             "differ in --presets, --methods, --train-count, --epochs and --progressive (each run's samples, epochs and "
             "stages are in its "
             "column); the latest: `python benchmarks/train_accuracy.py "
             f"{shlex.join(args.argv)}`. Raw numbers in train.<model>.json next to this file.", ""]
    for name in sorted({r["model"] for r in runs}):
        mine = [r for r in runs if r["model"] == name]
        float_top1 = next((r["top1"] for r in mine if r["method"] == "float"), None)
        columns = sorted({_column(r) for r in mine if r["method"] != "float"}, key=_order)
        lines += [f"## {name}" + (f" (float top-1 {100 * float_top1:.2f}%)" if float_top1 else ""), "",
                  "| preset | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
        for preset in PRESETS:
            cells = []
            for column in columns:
                r = next((r for r in mine if r["preset"] == preset and _column(r) == column), None)
                cells.append("" if r is None else f"{100 * r['top1']:.2f}" + (
                    f" ({100 * (r['top1'] - float_top1):+.2f})" if float_top1 else ""))
            if any(cells):
                lines.append(f"| {preset} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += _comparison(runs)
    lines += ["Time (whole quantize, seconds, this machine):", "", "| model | preset | method | N | epochs | seconds |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['preset']} | {r['method']}"
              f"{' ' + '->'.join(map(str, r['progressive'])) if r.get('progressive') else ''} | "
              f"{r['train_count'] or ''} | {r['epochs'] or ''} | "
              f"{r['seconds']:.0f}{' (' + r['note'] + ')' if r.get('note') else ''} |" for r in runs
              if r["method"] != "float"]
    return "\n".join(lines) + "\n"


def _comparison(runs: list[dict]) -> list[str]:
    """Per model and preset, the best of each family: BRECQ against the best trained run."""
    lines = ["Where each wins (best run of each kind, from the table):", ""]
    for name in sorted({r["model"] for r in runs}):
        for preset in PRESETS:
            mine = [r for r in runs if r["model"] == name and r["preset"] == preset]
            brecq = next((r for r in mine if r["method"] == "brecq"), None)
            trained = sorted((r for r in mine if r["train_count"]), key=lambda r: r["top1"])
            if brecq is None or not trained:
                continue
            best = trained[-1]
            winner = "BRECQ" if brecq["top1"] >= best["top1"] else _column(best)
            lines.append(f"- {name} {preset}: BRECQ {100 * brecq['top1']:.2f}, best trained {_column(best)} "
                         f"{100 * best['top1']:.2f}: {winner} wins by "
                         f"{100 * abs(brecq['top1'] - best['top1']):.2f} points.")
    return lines + [""]


def _column(run: dict) -> str:
    """A table column: the method, with the training samples and epochs for the trained ones."""
    if not run["train_count"]:
        return run["method"]
    return f"{run['method']} {run['train_count'] // 1024 if run['train_count'] % 1024 == 0 else run['train_count']}" \
           f"{'k' if run['train_count'] % 1024 == 0 else ''} x{run['epochs']}" + \
        (f" per stage of {'->'.join(map(str, run['progressive']))} bits" if run.get("progressive") else "")


def _order(column: str) -> tuple:
    method = next(m for m in sorted(METHODS, key=len, reverse=True) if column.startswith(m))
    return METHODS.index(method), column


def _same(a: dict, b: dict) -> bool:
    return all(a.get(k) == b.get(k) for k in ("preset", "method", "train_count", "epochs", "progressive"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=PRESETS)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--train-count", type=int, default=60000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--progressive", type=lambda t: [int(b) for b in t.split(",")],
                        help="QIL runs: bit widths trained in turn, --epochs each, ending at the preset's (e.g. 4,3,2)")
    parser.add_argument("--distill-count", type=int, default=1024)
    parser.add_argument("--distill-epochs", type=int, default=8)
    parser.add_argument("--brecq-iters", type=int, default=2000)
    parser.add_argument("--fresh", action="store_true", help="rerun runs already in the json files")
    parser.add_argument("--note", help="a remark kept with these runs and shown beside their time (e.g. what else ran)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()
    import sys

    args.argv = sys.argv[1:]
    train_x, train_y = load_fashion_mnist("train")
    test_x, test_y = load_fashion_mnist("test")
    calib = {"input": train_x[np.sort(np.random.default_rng(0).choice(len(train_x), 1024, replace=False))]}
    data = (train_x, train_y, test_x, test_y, calib)
    for name in args.models:
        path = RESULTS / f"train.{name}.json"
        runs = json.loads(path.read_text()) if path.exists() and not args.fresh else []
        for preset in args.presets:
            for method in args.methods:
                if method == "float" and preset != args.presets[0]:
                    continue
                planned = {"preset": preset, "method": method, **_planned(method, args)}
                if any(_same(r, planned) for r in runs) and not args.fresh:
                    continue
                runs = [r for r in runs if not _same(r, planned)]
                runs.append(run_one(name, preset, method, args, data))
                print(f"{name} {preset} {method}: {100 * runs[-1]['top1']:.2f}% in {runs[-1]['seconds']:.0f} s",
                      flush=True)
                path.write_text(json.dumps(runs, indent=1))
    every = [r for m in MODELS if (RESULTS / f"train.{m}.json").exists()
             for r in json.loads((RESULTS / f"train.{m}.json").read_text())]
    table = render(every, args)
    (RESULTS / "train.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
