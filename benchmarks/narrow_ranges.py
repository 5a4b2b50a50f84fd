"""Outputs of very different ranges joined in one tensor: what W8A8 keeps of each, ours against
onnxruntime's quantizer.

    python benchmarks/narrow_ranges.py        # writes benchmarks/results/narrow_ranges.md

The model is the corpus' tflite-converted detector (qcompiler.models.recipes.corpus,
"tflite_net"): box offsets in pixels (about +-250) concatenated with class scores (about +-3)
into one output, as tflite converters write SSD-style heads. One shared 8-bit scale gives the
scores a few steps of the grid. qcompiler unties such a Concat after calibration (each input
keeps its own scale, the Concat runs in float; docs/quantization.md); onnxruntime's
quantize_static (QDQ, per-channel, each calibrator, as ptq_accuracy.py runs it) ties the Concat's
inputs and output. SQNR of the float model's output, over boxes and scores separately, on 64
held-out random inputs (32 calibration inputs); both QDQ models run as written in onnxruntime.

Second table: the ImageNet MobileNetV2 (models/mobilenet_v2_imagenet.onnx) at W8A8 with the
default threshold of widen-activations (16-bit activations where the bulk of a tensor keeps under
12 dB at 8 bits: none here) and with `--widen-below 20` (its late residual stream): calibrated on foolbox's 20 ImageNet samples, compared with the float model on 60 others
made from them (mirrored, shifted 8 pixels down, 8 right): top-1 agreement, KL and SQNR of the
logits (not ImageNet accuracy); and the library's latency on this host, batch 1, one thread,
the two libraries taking turns (benchmarks/latency.py's timings).
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TVM_NUM_THREADS", "1")  # before tvm starts its thread pool

import platform  # noqa: E402
import sys  # noqa: E402
import tempfile
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from latency import timings  # noqa: E402
from ptq_accuracy import run_onnxruntime_quantizer  # noqa: E402

import qcompiler  # noqa: E402
from qcompiler.executor import session  # noqa: E402
from qcompiler.fidelity import run_reference  # noqa: E402
from qcompiler import models  # noqa: E402
from qcompiler.compiler import compile_qdq, write_library  # noqa: E402
from qcompiler.driver import evaluate, quantize  # noqa: E402
from qcompiler.models.datasets import load_foolbox_imagenet  # noqa: E402
from qcompiler.models.recipes import corpus  # noqa: E402
from qcompiler.quant.presets import QuantConfig  # noqa: E402
from qcompiler.runtime import load  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "narrow_ranges.md"
SCORES = 128   # the last 8x8x2 elements of each output row are the scores, the rest box offsets


def sqnr_db(want: np.ndarray, got: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(want ** 2) / np.sum((want - got) ** 2)))


def output_sqnr(want: np.ndarray, model: onnx.ModelProto, feeds: dict) -> tuple[float, float]:
    """(boxes, scores) SQNR in dB of `model`'s output against the float output `want`."""
    got = run_reference(session(model, optimize=False), feeds)[0][0]
    return sqnr_db(want[:, :-SCORES], got[:, :-SCORES]), sqnr_db(want[:, -SCORES:], got[:, -SCORES:])


def measure(folder: Path) -> list[tuple[str, float, float]]:
    proto = corpus.build("tflite_net", 13)
    path = folder / "tflite_net.onnx"
    onnx.save_model(proto, str(path))
    calib, held_out = corpus.sample_inputs(proto, 32), corpus.sample_inputs(proto, 64, seed=1)
    want = run_reference(session(proto, optimize=False), held_out)[0][0]
    run = qcompiler.quantize(qcompiler.load(path), calib, progress=False)
    rows = [(f"qcompiler W8A8 (untied: {', '.join(run.untied) or 'none'})", *output_sqnr(want, run.qdq.to_onnx(), held_out))]
    for calibrator in ("MinMax", "Percentile", "Entropy"):
        out, _ = run_onnxruntime_quantizer(path, calib, calibrator, 8, Path(tempfile.mkdtemp(dir=folder)))
        rows.append((f"onnxruntime quantize_static, {calibrator}", *output_sqnr(want, onnx.load(str(out)), held_out)))
    return rows


def mobilenet_v2(folder: Path, runs: int) -> list[str]:
    """Table rows: W8A8 with and without widen-activations on the ImageNet MobileNetV2."""
    images, _ = load_foolbox_imagenet()
    held_out = np.concatenate([images[:, :, :, ::-1], np.roll(images, 8, axis=2), np.roll(images, 8, axis=3)])
    rows, calls = {}, {}
    for widen in (False, True):
        config = QuantConfig(widen_below_db=20.0) if widen else QuantConfig()
        run = quantize(models.path("mobilenet_v2_imagenet.onnx"), {"input": images}, config, progress=False)
        e = evaluate(run, {"input": held_out}, progress=False)
        out = folder / f"mobilenet_v2-{widen}"
        write_library(compile_qdq(run.qdq, "native", 1), run.qdq, out)
        library, feeds = load(out), {"input": images[:1]}
        calls[widen] = lambda library=library, feeds=feeds: library.run(feeds)
        widened = ", ".join(f"{name.split('/')[2]} {name.split('/')[-1].split('_')[0]} {a:.1f}" for name, (a, _) in
                            run.widened.items()) or "none"
        rows[widen] = f"{e.agreement:.4f} | {e.kl:.4f} | {e.sqnr_db:.1f} | {{ms}} | {widened} |"
    medians = {name: median for name, (median, _, _) in timings(calls, runs).items()}
    return [f"| {'--widen-below 20' if widen else 'default (--widen-below 12)'} | "
            + rows[widen].format(ms=f"{medians[widen]:.3f}") for widen in (False, True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100, help="timed calls per library")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = measure(Path(tmp))
        mobilenet = mobilenet_v2(Path(tmp), args.runs)
    table = ["| quantizer | boxes SQNR (dB) | scores SQNR (dB) |", "|---|---|---|"]
    table += [f"| {name} | {boxes:.1f} | {scores:.1f} |" for name, boxes, scores in rows]
    table += ["", "ImageNet MobileNetV2, W8A8, against the float model on 60 held-out images (see the docstring):", "",
              "| setting | top-1 agreement | KL (nats) | logits SQNR (dB) | ms per image "
              "| widened (block, tensor, bulk dB at 8 bits) |",
              "|---|---|---|---|---|---|", *mobilenet]
    text = (f"# Outputs of very different ranges in one tensor\n\n`python benchmarks/narrow_ranges.py --runs "
            f"{args.runs}` on {platform.machine()} ({os.cpu_count()} cores), qcompiler {qcompiler.__version__}. The "
            "corpus tflite_net (box offsets about +-250 concatenated with scores about +-3 in one output), W8A8 per-channel, 32 calibration and 64 held-out "
            "random inputs; SQNR of each part of the output against the float model, both QDQ models run as written "
            "in onnxruntime.\n\n" + "\n".join(table) + "\n")
    print(text)
    RESULTS.write_text(text)
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
