"""Does reconstruction on the ImageNet MobileNetV2 generalise beyond its calibration crops?
Uniform W4A8: nearest rounding with bias correction, BRECQ (then the guarded bias correction, the
quantize default) and BRECQ with learned biases, each measured on the calibration crops
themselves and on the held-out photos: agreement with the float model, output SQNR and KL.

    apt-get install opencv-doc && pip install --no-deps foolbox==3.3.4 scikit-image
    python benchmarks/imagenet_generalization.py --iters 40    # writes results/imagenet_generalization.md

The crops are those of benchmarks/ptq_accuracy.py (512 random crops of 28 opencv-doc photos, many
of them synthetic: chessboards, logos, text); the held-out photos are the other 28 and
scikit-image's 6. Each run is kept in results/imagenet_generalization.json (not repeated unless
--fresh); the table is rendered from it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "2")

from qcompiler import ir, models  # noqa: E402
from qcompiler.blocks import LEARNED_BIAS_LR, ReconstructConfig  # noqa: E402
from qcompiler.data import load_data  # noqa: E402
from qcompiler.driver import quantize  # noqa: E402
from qcompiler.evaluation import evaluate  # noqa: E402
from qcompiler.quant.presets import load_config  # noqa: E402

from latency import publish  # noqa: E402
from ptq_accuracy import calibration_crops, imagenet_evaluation  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
RUNS = RESULTS / "imagenet_generalization.json"
METHODS = ("nearest+bias-correction", "brecq", "brecq+learned-bias", "brecq+holdout", "brecq+holdout-kl")
#: brecq+holdout: the crops of the last GUARD_PHOTOS of the 28 photos go last and are held out.
GUARD_PHOTOS = 7


def run_one(method: str, iters: int, calib, held_out, holdout: float = 0.0) -> dict:
    model = ir.load(models.path("mobilenet_v2_imagenet.onnx"))
    reconstruct = None if method.startswith("nearest") else ReconstructConfig(
        iters=iters, reg_weight=0.1, samples=512, bias_lr=LEARNED_BIAS_LR if method.endswith("learned-bias") else 0.0,
        holdout=holdout, holdout_metric="kl" if method.endswith("holdout-kl") else "mse")
    start = time.perf_counter()
    result = quantize(model, calib, load_config(None, "w4a8", None, []), progress=False, reconstruct=reconstruct)
    row = {"method": method, "iters": iters if reconstruct else 0, "seconds": round(time.perf_counter() - start),
           "bias_check": result.bias_check, "bias_kept": bool(result.bias_shifts)}
    guarded = [b for b in result.reconstruction if b.held_nearest is not None]
    if guarded:
        row["dropped"] = [f"{b.block.name}: {'+'.join(b.dropped)}" for b in guarded if b.dropped]
        row["blocks"] = len(guarded)
    for split, data in (("calib", calib), ("held", held_out)):
        scores = evaluate(result.float_model, result.qdq, load_data(data, result.float_model, what="evaluation"),
                          progress=False)
        row.update({f"{split}_agreement": scores.agreement, f"{split}_sqnr": scores.sqnr_db, f"{split}_kl": scores.kl})
    return row


def render(runs: list[dict], argv: str) -> str:
    lines = ["# Reconstruction on the ImageNet MobileNetV2: calibration crops against held-out photos", "",
             "`python benchmarks/imagenet_generalization.py --iters 40` (runs are kept in imagenet_generalization.json; "
             f"the latest invocation: `{argv or '(defaults)'}`); {platform.machine()}, {os.cpu_count()} cores. "
             "Uniform W4A8, calibrated on 512 random crops of 28 opencv-doc photos (many synthetic); BRECQ: block, "
             "regulariser 0.1, iterations per block as listed (+ a quarter for the step sizes; at most 247 crops fit "
             "the 2 GiB caches); *learned-bias*: biases learned with the rounding and the step sizes "
             "(`--learn-bias`), no bias correction after; *holdout*: the crops of the last "
             f"{GUARD_PHOTOS} photos (a quarter of them) are put last and held out (`--holdout`): a block keeps what a phase "
             "learned only where it does not raise the network's output error on them (*holdout-kl*: the KL divergence of the "
             "output softmax, `--holdout-metric kl`; *holdout*: the squared logit error). Each model is measured against the float model on the "
             "calibration crops themselves and on 54 held-out photos: top-1 agreement, output SQNR (dB), KL.", "",
             "| method | iterations | calibration crops: agreement | SQNR | KL | held-out photos: agreement | SQNR | KL "
             "| bias correction after it (SQNR without -> with, on the crops) | seconds |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    # methods no longer in METHODS (an earlier design, its commit in its note) come last
    for r in sorted(runs, key=lambda r: (METHODS.index(r["method"]) if r["method"] in METHODS else len(METHODS),
                                         r["iters"])):
        check = "" if not r["bias_check"] else \
            f"{r['bias_check'][0]:.2f} -> {r['bias_check'][1]:.2f} ({'kept' if r['bias_kept'] else 'not kept'})"
        lines.append(f"| {r['method']} | {r['iters'] or ''} | {100 * r['calib_agreement']:.1f} | {r['calib_sqnr']:.2f} "
                     f"| {r['calib_kl']:.4f} | {100 * r['held_agreement']:.1f} | {r['held_sqnr']:.2f} | "
                     f"{r['held_kl']:.4f} | {check} | {r['seconds']}{' (' + r['note'] + ')' if r.get('note') else ''} |")
    guarded = [r for r in runs if "blocks" in r]
    if guarded:
        lines.append("")
    for r in guarded:
        lines.append(f"- {r['method']} {r['iters']}: the guard dropped {sum(len(d.split('+')) for d in r['dropped'])} "
                     f"phases in {len(r['dropped'])} of {r['blocks']} blocks ({'; '.join(r['dropped']) or 'none'}).")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--iters", type=int, default=40)
    parser.add_argument("--fresh", action="store_true")
    args = parser.parse_args()
    crops, photos = calibration_crops(512)
    calib, (_, held_out) = {"input": crops}, imagenet_evaluation()
    last = photos >= photos.max() + 1 - GUARD_PHOTOS   # whole photos held out: their crops are not in the rest
    grouped = {"input": np.concatenate([crops[~last], crops[last]])}
    for method in args.methods:
        key = (method, args.iters if method != METHODS[0] else 0)
        runs = json.loads(RUNS.read_text()) if RUNS.exists() else []
        if not args.fresh and any((r["method"], r["iters"]) == key for r in runs):
            continue
        row = run_one(method, args.iters, grouped, held_out, last.mean()) if "holdout" in method else \
            run_one(method, args.iters, calib, held_out)
        print(row, flush=True)
        runs = [r for r in runs if (r["method"], r["iters"]) != key] + [row]
        RUNS.write_text(json.dumps(runs, indent=1))
    runs = json.loads(RUNS.read_text()) if RUNS.exists() else []
    publish(render(runs, " ".join(sys.argv[1:])), RESULTS / "imagenet_generalization.md")


if __name__ == "__main__":
    main()
