"""What BRECQ costs on large inputs, what random spatial crops buy, and what they cost in accuracy.

    pip install -e . && pip install --no-deps foolbox==3.3.4 && apt-get install dataset-fashion-mnist
    python benchmarks/brecq_cost.py                  # time and fashion; writes benchmarks/results/brecq_cost.md
    python benchmarks/brecq_cost.py --part time      # or fashion, imagenet; the other parts' numbers are kept

`time`: the corpus FPN detector (models/recipes/corpus.py, opset 17) at 384 x 384, W4A8, 128
calibration images (random resized crops of foolbox's 20 ImageNet photos): one training step of
every block (batch 32, timed after compilation, as the estimate times its probes) without crops,
with `--crop auto` and `--crop 32`, at block and layer granularity; then short real runs, whose
time is set beside the estimate printed before them.
`fashion`: the Fashion-MNIST ResNet-8 at W4A4 and W2A4, nearest rounding against BRECQ without
crops and with crops (default 8 and 4 output positions a side): top-1 on the 10,000 test images.
`imagenet`: the bundled ImageNet MobileNetV2 (224 x 224) at W4A8, rounding only, calibrated on 64
random resized crops of 10 of foolbox's photos, measured against the float model on the other 10
and their mirror images (agreement of top-1, KL).
Numbers are kept in benchmarks/results/brecq_cost.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "2")

import qcompiler  # noqa: E402
from qcompiler.blocks import ReconstructConfig  # noqa: E402
from qcompiler.ir import Model  # noqa: E402
from qcompiler.models.datasets import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from qcompiler.models.recipes.corpus import build  # noqa: E402
from qcompiler.passes.partition_blocks import partition  # noqa: E402
from qcompiler.sim.blockwise import Reconstruction  # noqa: E402
from qcompiler.sim.estimate import probe  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CROPS = {"off": None, "auto": "auto", "32": 32}


def photos() -> list[Path]:
    import importlib.util

    spec = importlib.util.find_spec("foolbox")
    if spec is None:
        raise SystemExit("needs foolbox's ImageNet photos: pip install --no-deps foolbox==3.3.4")
    return sorted((Path(spec.submodule_search_locations[0]) / "data").glob("imagenet_*.jpg"))


def random_crops(files: list[Path], count: int, size: int, seed: int = 0) -> np.ndarray:
    """`count` random resized crops (side 50-100% of the photo, random mirror), normalized, NCHW."""
    from PIL import Image

    rng, images, out = np.random.default_rng(seed), [Image.open(f).convert("RGB") for f in files], []
    for _ in range(count):
        image = images[rng.integers(len(images))]
        side = int(min(image.size) * np.sqrt(rng.uniform(0.25, 1.0)))
        left, top = rng.integers(0, image.size[0] - side + 1), rng.integers(0, image.size[1] - side + 1)
        crop = image.crop((left, top, left + side, top + side)).resize((size, size), Image.BILINEAR)
        out.append(np.asarray(crop.transpose(Image.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else crop, np.float32))
    return ((np.stack(out) / 255 - IMAGENET_MEAN) / IMAGENET_STD).transpose(0, 3, 1, 2).astype(np.float32)


def step_times(annotated: Model, data, granularity: str, crop) -> dict:
    """One timed training step per block (batch 32), and which blocks are cropped."""
    run = Reconstruction(annotated, partition(annotated, granularity), data, ReconstructConfig(crop=crop), False)
    seconds = [probe(run, i)[0] for i in range(len(run.blocks))]
    return {"blocks": len(run.blocks), "cropped": sum(c is not None for c in run.crops), "step": sum(seconds),
            "per_block": seconds, "crops": [c.describe() if c else "" for c in run.crops]}


def time_part(iters: int) -> dict:
    model = Model.from_onnx(build("fpn_detector", 17))
    data = {"input": random_crops(photos(), 128, 384)}
    plain = qcompiler.quantize(model.copy(), data, "w4a8", progress=False)  # the annotated, calibrated model
    rows = [{"granularity": g, "crop": name, **step_times(plain.annotated, plain.calibration, g, crop)}
            for g in ("block", "layer") for name, crop in CROPS.items()]
    for name in ("off", "auto"):
        start = time.perf_counter()
        run = qcompiler.quantize(model.copy(), data, "w4a8", progress=False,
                                 reconstruct=ReconstructConfig(iters=iters, crop=CROPS[name]))
        rows.append({"run": name, "iters": iters, "estimate": run.reconstruction_estimate.seconds,
                     "line": run.reconstruction_estimate.line(len(run.reconstruction)),
                     "setting": run.reconstruction_setting(),
                     "actual": sum(b.seconds for b in run.reconstruction), "total": time.perf_counter() - start,
                     "error": [sum(b.loss_nearest for b in run.reconstruction),
                               sum(b.loss_learned for b in run.reconstruction)]})
        print(rows[-1], flush=True)
    return {"rows": rows}


def fashion_part(iters: int, crops: list[str]) -> dict:
    """Fashion-MNIST ResNet-8: top-1 on the 10,000 test images, calibrated on 1024 training images."""
    from qcompiler.models.datasets import load_fashion_mnist

    train_x, _ = load_fashion_mnist("train")
    test_x, test_y = load_fashion_mnist("test")
    calib = {"input": train_x[np.sort(np.random.default_rng(0).choice(len(train_x), 1024, replace=False))]}
    rows = []
    for preset in ("w4a4", "w2a4"):
        for name in ("nearest", *crops):
            config = None if name == "nearest" else ReconstructConfig(iters=iters, crop=_crop(name))
            rows.append({"preset": preset, **_measure(ROOT / "models" / "fashion_resnet8.onnx", calib, preset, config,
                                                      {"input": test_x, "labels": test_y}, name)})
    return {"rows": rows, "iters": iters}


def imagenet_part(iters: int, batch: int, crops: list[str]) -> dict:
    """ImageNet MobileNetV2 at W4A8: agreement and KL against the float model on held-out photos
    (rounding only: act_iters 0, see the notes in the results)."""
    files = photos()
    calib = {"input": random_crops(files[0::2], 64, 224)}
    held = np.concatenate([_resized(files[1::2]), _resized(files[1::2])[..., ::-1]])
    rows = []
    for name in ("nearest", *crops):
        config = None if name == "nearest" else ReconstructConfig(
            iters=iters, act_iters=0, batch_size=batch, crop=_crop(name))
        rows.append({"preset": "w4a8", **_measure(ROOT / "models" / "mobilenet_v2_imagenet.onnx", calib, "w4a8",
                                                  config, {"input": np.ascontiguousarray(held)}, name)})
    return {"rows": rows, "iters": iters, "batch": batch, "held_out": len(held)}


def _crop(name: str):
    return CROPS[name] if name in CROPS else int(name)


def _measure(path: Path, calib, preset: str, config, held: dict, name: str) -> dict:
    start = time.perf_counter()
    run = qcompiler.quantize(str(path), calib, preset, progress=False, reconstruct=config)
    seconds = time.perf_counter() - start
    result = qcompiler.evaluate(run, held, progress=False)
    estimate = run.reconstruction_estimate
    row = {"method": name, "top1": result.quant_top1, "float_top1": result.float_top1, "agreement": result.agreement,
           "kl": result.kl, "seconds": seconds, "reconstruction": sum(b.seconds for b in run.reconstruction),
           "estimate": estimate.seconds if estimate else None, "cropped": len(estimate.cropped) if estimate else 0}
    print(row, flush=True)
    return row


def _resized(files: list[Path]) -> np.ndarray:
    from PIL import Image

    pixels = [np.asarray(Image.open(f).convert("RGB").resize((224, 224), Image.BILINEAR), np.float32) / 255
              for f in files]
    return ((np.stack(pixels) - IMAGENET_MEAN) / IMAGENET_STD).transpose(0, 3, 1, 2).astype(np.float32)


def render(results: dict) -> str:
    lines = ["# BRECQ on large inputs: the estimate, crops, and what they cost", "",
             f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared with other "
             "work). Raw numbers in brecq_cost.json next to this file.", ""]
    if "time" in results:
        rows = results["time"]["rows"]
        lines += ["## Time: FPN detector at 384 x 384, W4A8, 128 calibration images", "",
                  f"`{results['time']['command']}`", "",
                  "One training step of every block (batch 32, after compilation), summed; and what the "
                  "training steps alone come to at 200+50 and at the authors' 20,000+5,000 iterations per block. "
                  "The machine is shared: the same uncropped block measures up to a third apart between rows, "
                  "so the cropped blocks' own steps (measured in the same row and in the row without crops) say "
                  "more than the sums.", "",
                  "| granularity | crop | blocks cropped | their step without -> with crops (s) | one step of every "
                  "block (s) | 200+50 iterations | 20,000+5,000 |", "|---|---|---|---|---|---|---|"]
        for r in (r for r in rows if "step" in r):
            off = next(o for o in rows if o.get("granularity") == r["granularity"] and o.get("crop") == "off")
            cut = [i for i, c in enumerate(r["crops"]) if c]
            their = (f"{sum(off['per_block'][i] for i in cut):.3f} -> {sum(r['per_block'][i] for i in cut):.3f}"
                     if cut else "")
            lines.append(f"| {r['granularity']} | {r['crop']} | {r['cropped']}/{r['blocks']} | {their} | "
                         f"{r['step']:.2f} | {_minutes(250 * r['step'])} | {_minutes(25000 * r['step'])} |")
        lines += ["", "Real runs (block granularity): the estimate printed before the work against the time the "
                  "blocks took (the summary row's two numbers).", "",
                  "| crop | iterations | estimate (s) | took (s) | block output error, nearest -> learned |",
                  "|---|---|---|---|---|"]
        for r in (r for r in rows if "run" in r):
            lines.append(f"| {r['run']} | {r['iters']}+{r['iters'] // 4} | {r['estimate']:.0f} | {r['actual']:.0f} | "
                         f"{r['error'][0]:.4g} -> {r['error'][1]:.4g} |")
        printed = [r["line"] for r in rows if r.get("run") == "auto" and "line" in r]
        lines += ["", *(["The estimate as printed before the run with crops (auto):", "", "```", printed[0], "```"]
                        if printed else []), ""]
    if "fashion" in results:
        f = results["fashion"]
        lines += ["## Accuracy: Fashion-MNIST ResNet-8 (28 x 28)", "", f"`{f['command']}`", "",
                  f"BRECQ {f['iters']}+{f['iters'] // 4} iterations per block, batch 32, 1024 calibration images; "
                  f"top-1 on the 10,000 test images (float {100 * f['rows'][0]['float_top1']:.2f}%), agreement "
                  "with the float model's top-1, KL(float || quantized). `auto` crops nothing at 28 x 28; a crop of "
                  "8 here is to the image as 64 is to a 224 x 224 one, a crop of 4 as 64 to 448 x 448.", "",
                  *_accuracy_table(f["rows"])]
    if "imagenet" in results:
        a = results["imagenet"]
        lines += ["## Accuracy: ImageNet MobileNetV2 (224 x 224), W4A8", "", f"`{a['command']}`", "",
                  f"Rounding only ({a['iters']} iterations per block, batch {a['batch']}, activation step sizes as "
                  f"calibrated); agreement of top-1 and KL on {a['held_out']} held-out images.", "",
                  *_accuracy_table(a["rows"]),
                  "Nearest rounding here has bias correction (the default without --reconstruct). This many "
                  "iterations leave BRECQ far from converged on this network, worse than nearest rounding: the "
                  "rows compare crops with whole samples at one short setting, not BRECQ with plain PTQ (a run "
                  "with the step sizes learned too, 100+25 at batch 8, stopped on a NaN step size). The runs "
                  "shared the 2 cores with other jobs, also while the estimate's probes ran.", ""]
    return "\n".join(lines)


def _accuracy_table(rows: list[dict]) -> list[str]:
    lines = ["| preset | method | blocks cropped | top-1 (%) | agreement | KL (nats) | estimate (s) | took (s) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        top1 = f"{100 * r['top1']:.2f}" if r["top1"] is not None else ""
        method = "nearest" if r["method"] == "nearest" else f"BRECQ, crop {r['method']}"
        timing = f"{r['estimate']:.0f} | {r['reconstruction']:.0f}" if r["estimate"] else " | "
        lines.append(f"| {r['preset']} | {method} | {r['cropped']} | {top1} | {r['agreement']:.4f} | {r['kl']:.4f} | "
                     f"{timing} |")
    return lines + [""]


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["time", "fashion", "imagenet", "all"], default="all",
                        help="all: time and fashion (imagenet is long: about 10 minutes a run here)")
    parser.add_argument("--time-iters", type=int, default=40, help="iterations of the real FPN runs")
    parser.add_argument("--iters", type=int, default=1000, help="iterations of the accuracy runs")
    parser.add_argument("--batch", type=int, default=8, help="batch of the MobileNetV2 runs")
    parser.add_argument("--crops", default="off,8,4", help="the crops the accuracy runs compare")
    args = parser.parse_args()
    store = RESULTS / "brecq_cost.json"
    results = json.loads(store.read_text()) if store.exists() else {}
    command, crops = "python benchmarks/brecq_cost.py --part", args.crops.split(",")
    if args.part in ("time", "all"):
        results["time"] = time_part(args.time_iters) | {"command": f"{command} time --time-iters {args.time_iters}"}
    if args.part in ("fashion", "all"):
        results["fashion"] = fashion_part(args.iters, crops) | {
            "command": f"{command} fashion --iters {args.iters} --crops {args.crops}"}
    if args.part == "imagenet":
        results["imagenet"] = imagenet_part(args.iters, args.batch, crops) | {
            "command": f"{command} imagenet --iters {args.iters} --batch {args.batch} --crops {args.crops}"}
    results.pop("accuracy", None)
    store.write_text(json.dumps(results, indent=1))
    text = render(results)
    (RESULTS / "brecq_cost.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
