"""PTQ accuracy: qcompiler against onnxruntime's quantize_static, every observer, per-channel
against per-tensor, W8A8 and W4A8; plus the time of one whole `quantize` of MobileNetV2.

    apt-get install dataset-fashion-mnist opencv-doc
    pip install -e . && pip install --no-deps foolbox==3.3.4 scikit-image
    python benchmarks/ptq_accuracy.py                  # writes benchmarks/results/ptq.md

Data:
- Fashion-MNIST nets: calibrated on 512 training images (seed 0), evaluated on all 10,000 test images.
- MobileNetV2 (ImageNet weights): calibrated on 512 random crops (seed 0) of half the opencv-doc
  sample photos (even positions in name order); top-1 on foolbox's 20 labelled ImageNet samples;
  agreement and KL with the float model on those 20, the other half of the opencv-doc photos and
  scikit-image's 6 object photos (centre crops). This is not ImageNet accuracy.
"""

from __future__ import annotations

import argparse
import json
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
from qcompiler.models.datasets import IMAGENET_MEAN, IMAGENET_STD, load_fashion_mnist, load_foolbox_imagenet, unlabelled_photos  # noqa: E402
from qcompiler.driver import quantize  # noqa: E402
from qcompiler.evaluation import evaluate  # noqa: E402
from qcompiler.quant.presets import QuantConfig, load_config  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "ptq.md"
OBSERVERS = ("minmax", "ema", "percentile", "lp", "kl")
ORT_CALIBRATORS = ("MinMax", "Entropy", "Percentile", "Distribution")
NO_BIAS_CORRECTION = "qcompiler --no-bias-correction"


def fashion_data(count: int = 512):
    train_x, _ = load_fashion_mnist("train")
    test_x, test_y = load_fashion_mnist("test")
    picks = np.sort(np.random.default_rng(0).choice(len(train_x), count, replace=False))
    return {"input": train_x[picks]}, {"input": test_x, "labels": test_y}


def imagenet_data(count: int = 512):
    """512 random resized crops (scale 0.25-1, flips) of the opencv-doc photos; eval: foolbox + skimage."""
    return ({"input": calibration_crops(count)[0]}, *imagenet_evaluation())


def imagenet_evaluation() -> tuple[dict, dict]:
    """The labelled foolbox images, and those with the held-out photos (other opencv-doc photos and
    scikit-image's) for agreement with the float model."""
    from PIL import Image

    photos = unlabelled_photos()
    labelled_x, labelled_y = load_foolbox_imagenet()
    preprocess = ImagePreprocess(256, 224, IMAGENET_MEAN, IMAGENET_STD)
    held_out = photos["opencv-doc"][1::2] + photos["scikit-image"]
    photos = np.stack([preprocess.apply(Image.open(p), (224, 224)) for p in held_out]).astype(np.float32)
    return {"input": labelled_x, "labels": labelled_y}, {"input": np.concatenate([labelled_x, photos])}


def calibration_crops(count: int) -> tuple[np.ndarray, np.ndarray]:
    """`count` random resized crops (scale 0.25-1, flips) of every other opencv-doc photo, NCHW
    normalised, and the index of the photo each comes from."""
    from PIL import Image

    photos = unlabelled_photos()
    if not photos["opencv-doc"] or not photos["scikit-image"]:
        sys.exit("needs Debian's opencv-doc and `pip install --no-deps scikit-image` (for their photos)")
    rng = np.random.default_rng(0)
    images = [Image.open(p).convert("RGB") for p in photos["opencv-doc"][0::2]]
    crops, sources = [], []
    for _ in range(count):
        sources.append(rng.integers(len(images)))
        image = images[sources[-1]]
        w, h = image.size
        side = int(min(w, h) * np.sqrt(rng.uniform(0.25, 1.0)))
        left, top = rng.integers(0, w - side + 1), rng.integers(0, h - side + 1)
        crop = image.crop((left, top, left + side, top + side)).resize((224, 224), Image.BILINEAR)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        crops.append(np.asarray(crop, np.float32) / 255)
    calib = ((np.stack(crops) - IMAGENET_MEAN) / IMAGENET_STD).transpose(0, 3, 1, 2).astype(np.float32)
    return calib, np.asarray(sources)


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


#: Address-space limit for onnxruntime's quantizer (run in a child process): its Entropy calibrator
#: keeps every calibration activation in memory, and on MobileNetV2 with 512 images it was killed by
#: the kernel at 24 GB, taking this whole benchmark with it.
ORT_MEMORY_LIMIT = 12 * 2**30


def onnxruntime_quantizer(model_path: Path, calib, evals, calibrator: str, weight_bits: int) -> dict:
    """onnxruntime's quantizer, measured; its output runs as it is (its int4 models use
    com.microsoft Q/DQ, which our loader refuses as non-standard ONNX)."""
    import onnx

    with tempfile.TemporaryDirectory() as tmp:
        out, seconds = run_onnxruntime_quantizer(model_path, calib, calibrator, weight_bits, Path(tmp))
        return measure(ir.load(model_path), onnx.load(str(out)), evals) | {"seconds": seconds}


def run_onnxruntime_quantizer(model_path: Path, calib, calibrator: str, weight_bits: int, folder: Path) -> tuple[Path, float]:
    """onnxruntime's own static quantizer as its docs recommend (quant_pre_process, then
    quantize_static: QDQ, per-channel int8 or int4 weights, uint8 activations), in a child process
    under ORT_MEMORY_LIMIT. Returns the quantized model's path in `folder` and quantize_static's time."""
    import subprocess

    data, out = folder / "calib.npy", folder / "q.onnx"
    np.save(data, calib["input"])
    command = [sys.executable, __file__, "--ort-child", str(model_path), str(data), str(out), calibrator,
               str(weight_bits)]
    done = subprocess.run(command, capture_output=True, text=True, preexec_fn=_limit_memory)
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["?"])[-1]
        out_of_memory = any(m in done.stderr for m in ("MemoryError", "bad_alloc", "Failed to allocate memory"))
        reason = "out of memory" if out_of_memory or done.returncode < 0 else tail[:120]
        raise RuntimeError(f"{reason} (limit {ORT_MEMORY_LIMIT // 2**30} GiB, exit {done.returncode})")
    return out, float(done.stdout.strip().splitlines()[-1].split()[-1])


def _limit_memory() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (ORT_MEMORY_LIMIT, ORT_MEMORY_LIMIT))


def ort_child(model_path: str, data_path: str, out_path: str, calibrator: str, weight_bits: str) -> None:
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    calib = np.load(data_path, allow_pickle=False)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{"input": calib[i:i + 1]} for i in range(len(calib))])

        def get_next(self):
            return next(self.items, None)

    pre = str(Path(out_path).with_name("pre.onnx"))
    quant_pre_process(model_path, pre)
    start = time.perf_counter()
    quantize_static(pre, out_path, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8 if weight_bits == "8" else QuantType.QInt4,
                    calibrate_method=getattr(CalibrationMethod, calibrator))
    print(f"quantize_static seconds {time.perf_counter() - start:.3f}")


def run_model(name: str, path: Path, calib, evals, quick: bool) -> list[dict]:
    model = ir.load(path)
    rows = []

    def add(method, weights, granularity, observer, result):
        rows.append({"model": name, "method": method, "weights": weights, "granularity": granularity,
                     "observer": observer, **result})
        r = rows[-1]
        print(f"{name:<22} {method:<28} {weights} {granularity:<11} {observer:<12} top-1 {r['top1']:.4f} "
              f"agree {r['agreement']:.4f} {r['seconds']:.1f}s", flush=True)

    observers = ("minmax", "lp") if quick else OBSERVERS
    for preset, weights in (("w8a8", "int8"), ("w4a8", "int4")):
        for observer in observers:
            add("qcompiler", weights, "per-channel", observer, ours(model, calib, evals, load_config(None, preset, observer, [])))
        for observer in observers:
            add(NO_BIAS_CORRECTION, weights, "per-channel", observer,
                ours(model, calib, evals, load_config(None, preset, observer, [], bias_correction=False)))
        if preset == "w8a8":
            for observer in observers:
                add("qcompiler", weights, "per-tensor", observer,
                    ours(model, calib, evals, load_config(None, "w8a8-per-tensor", observer, [])))
        for calibrator in (("MinMax", "Percentile") if quick else ORT_CALIBRATORS):
            try:
                add("onnxruntime quantize_static", weights, "per-channel", calibrator,
                    onnxruntime_quantizer(path, calib, evals, calibrator, 8 if preset == "w8a8" else 4))
            except RuntimeError as exc:  # a peer's failure is a result too: record it
                print(f"onnxruntime {calibrator} {weights}: failed: {exc}", flush=True)
                rows.append({"model": name, "method": "onnxruntime quantize_static", "weights": weights,
                             "granularity": "per-channel", "observer": calibrator, "failed": str(exc)})
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


def comparisons(rows: list[dict]) -> list[str]:
    """Best of each method per model and weight width, and per-channel against per-tensor."""
    ok = [r for r in rows if "failed" not in r]
    lines = ["| model | weights | best qcompiler (per-channel) | best onnxruntime | qcompiler per-tensor (best) "
             "| qcompiler per-channel without bias correction (best) |",
             "|---|---|---|---|---|---|"]
    for model in dict.fromkeys(r["model"] for r in ok):
        for weights in ("int8", "int4"):
            def best(method, granularity):
                found = [r for r in ok if (r["model"], r["weights"], r["method"], r["granularity"]) ==
                         (model, weights, method, granularity)]
                top = max(found, key=lambda r: (r["top1"], r["agreement"]), default=None)
                return "n/a" if top is None else f"{top['top1']:.4f} ({top['observer']}, agreement {top['agreement']:.4f})"
            lines.append(f"| {model} | {weights} | {best('qcompiler', 'per-channel')} | "
                         f"{best('onnxruntime quantize_static', 'per-channel')} | {best('qcompiler', 'per-tensor')} | "
                         f"{best(NO_BIAS_CORRECTION, 'per-channel')} |")
    return lines


def render(rows: list[dict], seconds: float | None, quick: bool, agreement_count: int) -> str:
    fp = {r["model"]: r["fp"] for r in rows if "fp" in r}
    text = [
        "# PTQ accuracy",
        "",
        f"Made by `python benchmarks/ptq_accuracy.py{' --quick' if quick else ''}` on {platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}. Calibration and evaluation data: see the "
        "script's docstring. Fashion-MNIST: top-1 on all 10,000 test images. MobileNetV2 (ImageNet weights): top-1 on "
        f"foolbox's 20 labelled samples, agreement and KL (float against quantized) on {agreement_count} held-out "
        "images (those 20 and unlabelled photos); not ImageNet accuracy, and with so few images one image is "
        f"{100 / 20:.0f} points of top-1. Activations are uint8 per tensor in every row; the observer column "
        "is the activation observer (weights: min/max at int8, Lp search at int4). `seconds` is the quantizer's "
        "own time (calibration included, evaluation excluded). qcompiler rows use bias correction (the default; "
        "passes/correct_bias.py) unless the method says `--no-bias-correction`. onnxruntime's quantizer runs in a child process "
        f"limited to {ORT_MEMORY_LIMIT // 2**30} GiB of address space.",
        "",
        "## Summary",
        "",
        *comparisons(rows),
        "",
        "## Every run",
        "",
        table(rows, fp),
        "",
    ]
    if seconds is not None:
        text += [f"Whole `quantize` of MobileNetV2 (1x3x224x224) with 512 calibration images, w8a8, default "
                 f"observer (lp): **{seconds:.1f} s** (goal: at most 60 s on 2 cores).", ""]
    return "\n".join(text)


def main() -> None:
    if sys.argv[1:2] == ["--ort-child"]:
        ort_child(*sys.argv[2:7])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="two observers and two onnxruntime calibrators only")
    parser.add_argument("--models", default="fashion_resnet8,fashion_mobilenetv2,mobilenet_v2_imagenet")
    parser.add_argument("--render", action="store_true", help="rewrite ptq.md from ptq.json without running")
    args = parser.parse_args()
    if args.render:
        saved = json.loads(RESULTS.with_suffix(".json").read_text())
        RESULTS.write_text(render(saved["rows"], saved["mobilenet_quantize_seconds"], saved["quick"],
                                  saved["agreement_count"]))
        return
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
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.with_suffix(".json").write_text(json.dumps(
        {"rows": rows, "mobilenet_quantize_seconds": seconds, "quick": args.quick, "agreement_count": agreement_count},
        indent=1))
    RESULTS.write_text(render(rows, seconds, args.quick, agreement_count))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
