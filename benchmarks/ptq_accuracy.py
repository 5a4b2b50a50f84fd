"""PTQ accuracy: qcompiler against onnxruntime's quantize_static, every observer, per-channel
against per-tensor, W8A8 and W4A8; plus the time of one whole `quantize` of MobileNetV2.

    apt-get install dataset-fashion-mnist opencv-doc
    pip install -e . && pip install --no-deps foolbox==3.3.4 scikit-image
    python benchmarks/ptq_accuracy.py                  # writes benchmarks/results/ptq.md

Data (DESIGN.md §6):
- Fashion-MNIST nets: calibrated on 512 training images (seed 0), evaluated on all 10,000 test images.
- MobileNetV2 (ImageNet weights): calibrated on 512 random crops (seed 0) of half the opencv-doc
  sample photos (even positions in name order); top-1 on foolbox's 20 labelled ImageNet samples;
  agreement and KL with the float model on those 20, the other half of the opencv-doc photos and
  scikit-image's 6 object photos (centre crops). This is not ImageNet accuracy.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "2")

from qcompiler import ir, models  # noqa: E402
from qcompiler.data import ImagePreprocess, load_data  # noqa: E402
from qcompiler.datasets import IMAGENET_MEAN, IMAGENET_STD, load_fashion_mnist, load_foolbox_imagenet, unlabelled_photos  # noqa: E402
from qcompiler.driver import quantize  # noqa: E402
from qcompiler.evaluate import evaluate  # noqa: E402
from qcompiler.quant.presets import QuantConfig, load_config  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "ptq.md"
OBSERVERS = ("minmax", "ema", "percentile", "mse", "kl")
ORT_CALIBRATORS = ("MinMax", "Entropy", "Percentile", "Distribution")


def fashion_data(count: int = 512):
    train_x, _ = load_fashion_mnist("train")
    test_x, test_y = load_fashion_mnist("test")
    picks = np.sort(np.random.default_rng(0).choice(len(train_x), count, replace=False))
    return {"input": train_x[picks]}, {"input": test_x, "labels": test_y}


def imagenet_data(count: int = 512):
    """512 random resized crops (scale 0.25-1, flips) of the opencv-doc photos; eval: foolbox + skimage."""
    from PIL import Image

    photos = unlabelled_photos()
    if not photos["opencv-doc"] or not photos["scikit-image"]:
        sys.exit("needs Debian's opencv-doc and `pip install --no-deps scikit-image` (for their photos)")
    rng = np.random.default_rng(0)
    images = [Image.open(p).convert("RGB") for p in photos["opencv-doc"][0::2]]
    crops = []
    for _ in range(count):
        image = images[rng.integers(len(images))]
        w, h = image.size
        side = int(min(w, h) * np.sqrt(rng.uniform(0.25, 1.0)))
        left, top = rng.integers(0, w - side + 1), rng.integers(0, h - side + 1)
        crop = image.crop((left, top, left + side, top + side)).resize((224, 224), Image.BILINEAR)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        crops.append(np.asarray(crop, np.float32) / 255)
    calib = ((np.stack(crops) - IMAGENET_MEAN) / IMAGENET_STD).transpose(0, 3, 1, 2).astype(np.float32)
    labelled_x, labelled_y = load_foolbox_imagenet()
    preprocess = ImagePreprocess(256, 224, IMAGENET_MEAN, IMAGENET_STD)
    held_out = photos["opencv-doc"][1::2] + photos["scikit-image"]
    photos = np.stack([preprocess.apply(Image.open(p), (224, 224)) for p in held_out]).astype(np.float32)
    return {"input": calib}, {"input": labelled_x, "labels": labelled_y}, {"input": np.concatenate([labelled_x, photos])}


def ours(model: ir.Model, calib, evals, config: QuantConfig) -> dict:
    start = time.perf_counter()
    result = quantize(model.copy(), calib, config, progress=False)
    seconds = time.perf_counter() - start
    return measure(result.float_model, result.qdq, evals) | {"seconds": seconds}


def measure(float_model, quant_model, evals) -> dict:
    """Labelled evaluation first; agreement and KL on the agreement set when there is one."""
    labelled = evaluate(float_model, quant_model, load_data(evals[0], float_model, what="evaluation"), progress=False)
    row = {"fp": labelled.float_top1, "top1": labelled.quant_top1, "agreement": labelled.agreement, "kl": labelled.kl}
    if len(evals) > 1:
        agree = evaluate(float_model, quant_model, load_data(evals[1], float_model, what="evaluation"), progress=False)
        row.update(agreement=agree.agreement, kl=agree.kl)
    return row


def onnxruntime_quantizer(model_path: Path, calib, evals, calibrator: str, weight_bits: int) -> dict:
    """onnxruntime's own static quantizer as its docs recommend: quant_pre_process, then
    quantize_static with QDQ, per-channel int8 (or int4) weights, uint8 activations."""
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{"input": calib["input"][i:i + 1]} for i in range(len(calib["input"]))])

        def get_next(self):
            return next(self.items, None)

    with tempfile.TemporaryDirectory() as tmp:
        pre, out = Path(tmp) / "pre.onnx", Path(tmp) / "q.onnx"
        quant_pre_process(str(model_path), str(pre))
        start = time.perf_counter()
        quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8 if weight_bits == 8 else QuantType.QInt4,
                        calibrate_method=getattr(CalibrationMethod, calibrator))
        seconds = time.perf_counter() - start
        # Run onnxruntime's output as it is (its int4 models use com.microsoft Q/DQ, which our
        # loader refuses as non-standard ONNX), against the float model as given.
        import onnx

        return measure(ir.load(model_path), onnx.load(str(out)), evals) | {"seconds": seconds}


def run_model(name: str, path: Path, calib, evals, quick: bool) -> list[dict]:
    model = ir.load(path)
    rows = []

    def add(method, weights, granularity, observer, result):
        rows.append({"model": name, "method": method, "weights": weights, "granularity": granularity,
                     "observer": observer, **result})
        r = rows[-1]
        print(f"{name:<22} {method:<28} {weights} {granularity:<11} {observer:<12} top-1 {r['top1']:.4f} "
              f"agree {r['agreement']:.4f} {r['seconds']:.1f}s", flush=True)

    observers = ("minmax", "mse") if quick else OBSERVERS
    for preset, weights in (("w8a8", "int8"), ("w4a8", "int4")):
        for observer in observers:
            add("qcompiler", weights, "per-channel", observer, ours(model, calib, evals, load_config(None, preset, observer, [])))
        if preset == "w8a8":
            for observer in observers:
                add("qcompiler", weights, "per-tensor", observer,
                    ours(model, calib, evals, load_config(None, "w8a8-per-tensor", observer, [])))
        for calibrator in (("MinMax", "Percentile") if quick else ORT_CALIBRATORS):
            try:
                add("onnxruntime quantize_static", weights, "per-channel", calibrator,
                    onnxruntime_quantizer(path, calib, evals, calibrator, 8 if preset == "w8a8" else 4))
            except Exception as exc:  # a peer's failure is a result too: record it
                print(f"onnxruntime {calibrator} {weights}: failed: {type(exc).__name__}: {exc}", flush=True)
                rows.append({"model": name, "method": "onnxruntime quantize_static", "weights": weights,
                             "granularity": "per-channel", "observer": calibrator, "failed": f"{type(exc).__name__}"})
    return rows


def time_mobilenet(calib) -> float:
    """Wall time of one whole quantize (load, canonicalize, fold, calibrate with 512 images, QDQ)."""
    start = time.perf_counter()
    quantize(ir.load(models.path("mobilenet_v2_imagenet.onnx")), calib, load_config(None, "w8a8", None, []), progress=False)
    return time.perf_counter() - start


def table(rows: list[dict], fp: dict[str, float]) -> str:
    lines = ["| model | method | weights | granularity | observer / calibrator | top-1 | drop (points) | agreement | KL | seconds |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, value in fp.items():
        lines.append(f"| {name} | float (FP32) | | | | {value:.4f} | | | | |")
    for r in rows:
        if "failed" in r:
            lines.append(f"| {r['model']} | {r['method']} | {r['weights']} | {r['granularity']} | {r['observer']} | "
                         f"failed: {r['failed']} | | | | |")
            continue
        lines.append(f"| {r['model']} | {r['method']} | {r['weights']} | {r['granularity']} | {r['observer']} | "
                     f"{r['top1']:.4f} | {100 * (r['fp'] - r['top1']):+.2f} | {r['agreement']:.4f} | {r['kl']:.4f} | "
                     f"{r['seconds']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="two observers and two onnxruntime calibrators only")
    parser.add_argument("--models", default="fashion_resnet8,fashion_mobilenetv2,mobilenet_v2_imagenet")
    args = parser.parse_args()
    rows = []
    wanted = args.models.split(",")
    fashion_calib, fashion_eval = fashion_data()
    for name in ("fashion_resnet8", "fashion_mobilenetv2"):
        if name in wanted:
            rows += run_model(name, models.path(f"{name}.onnx"), fashion_calib, [fashion_eval], args.quick)
    seconds, agreement_count = None, 0
    if "mobilenet_v2_imagenet" in wanted:
        calib, labelled, agreement = imagenet_data()
        agreement_count = len(agreement["input"])
        rows += run_model("mobilenet_v2_imagenet", models.path("mobilenet_v2_imagenet.onnx"), calib, [labelled, agreement], args.quick)
        seconds = time_mobilenet(calib)
        print(f"quantize MobileNetV2, 512 calibration images: {seconds:.1f} s")
    fp = {r["model"]: r["fp"] for r in rows if "fp" in r}
    text = [
        "# PTQ accuracy",
        "",
        f"Made by `python benchmarks/ptq_accuracy.py{' --quick' if args.quick else ''}` on {platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}. Calibration and evaluation data: see the "
        "script's docstring. Fashion-MNIST: top-1 on all 10,000 test images. MobileNetV2 (ImageNet weights): top-1 on "
        f"foolbox's 20 labelled samples, agreement and KL (float against quantized) on {agreement_count} held-out "
        "images (those 20 and unlabelled photos); not ImageNet accuracy, and with so few images one image is "
        f"{100 / 20:.0f} points of top-1. Activations are uint8 per tensor in every row; the observer column "
        "is the activation observer (weights: min/max at int8, Lp search at int4). `seconds` is the quantizer's "
        "own time (calibration included, evaluation excluded).",
        "",
        table(rows, fp),
        "",
    ]
    if seconds is not None:
        text += [f"Whole `quantize` of MobileNetV2 (1x3x224x224) with 512 calibration images, w8a8, default "
                 f"observer (mse): **{seconds:.1f} s** (goal: at most 60 s on 2 cores).", ""]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(text))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
