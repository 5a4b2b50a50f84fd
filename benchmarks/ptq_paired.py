"""Paired comparison of W8A8 quantizers on the same 10,000 Fashion-MNIST test images.

    python benchmarks/ptq_paired.py          # writes benchmarks/results/ptq_paired.md

Top-1 differences of a few images say little by themselves; McNemar's exact test asks whether
the images one quantizer gets right and the other wrong are more lopsided than chance. Same
calibration data as ptq_accuracy.py (512 training images, seed 0). qcompiler: W8A8 per-channel
with each observer; onnxruntime quantize_static: QDQ per-channel with each calibrator that works
(Distribution is left out: 16% and 6% top-1 in ptq.md).
"""

from __future__ import annotations

import math
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ptq_accuracy import OBSERVERS, fashion_data, run_onnxruntime_quantizer  # noqa: E402

from qcompiler import ir, models  # noqa: E402
from qcompiler.driver import quantize  # noqa: E402
from qcompiler.executor import session  # noqa: E402
from qcompiler.quant.presets import load_config  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "ptq_paired.md"
ORT_CALIBRATORS = ("MinMax", "Entropy", "Percentile")


def predictions(model, images: np.ndarray) -> np.ndarray:
    runner = session(model, optimize=False)  # QDQ as written (QLinear kernels saturate on AVX2)
    return np.concatenate([runner.run(None, {"input": images[i:i + 1000]})[0].argmax(1) for i in range(0, len(images), 1000)])


def mcnemar_p(b: int, c: int) -> float:
    """Two-sided exact McNemar test: P(a split at least this lopsided | no difference)."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2**n
    return min(1.0, 2 * tail)


def main() -> None:
    calib, test = fashion_data()
    lines = ["# Paired W8A8 comparison (McNemar's exact test)", "",
             f"Made by `python benchmarks/ptq_paired.py` on {platform.machine()}, Python {platform.python_version()}. "
             "All 10,000 Fashion-MNIST test images; 512 training images to calibrate. b: images qcompiler gets right "
             "and onnxruntime wrong; c: the reverse; p: two-sided exact McNemar p-value (small p: a real difference).",
             "", "| model | comparison | qcompiler top-1 | onnxruntime top-1 | b | c | p |", "|---|---|---|---|---|---|---|"]
    for name in ("fashion_resnet8", "fashion_mobilenetv2"):
        path = models.path(f"{name}.onnx")
        ours = {o: predictions(quantize(ir.load(path), calib, load_config(None, "w8a8", o, []), progress=False).qdq,
                               test["input"]) for o in OBSERVERS}
        theirs = {}
        for calibrator in ORT_CALIBRATORS:
            with tempfile.TemporaryDirectory() as tmp:
                out, _ = run_onnxruntime_quantizer(path, calib, calibrator, 8, Path(tmp))
                theirs[calibrator] = predictions(onnx.load(str(out)), test["input"])
        right = {k: v == test["labels"] for k, v in {**ours, **theirs}.items()}
        best_ours = max(OBSERVERS, key=lambda o: right[o].mean())
        best_theirs = max(ORT_CALIBRATORS, key=lambda c: right[c].mean())
        for label, a, z in (("best against best", best_ours, best_theirs), ("defaults (lp, MinMax)", "lp", "MinMax")):
            b = int(np.sum(right[a] & ~right[z]))
            c = int(np.sum(~right[a] & right[z]))
            lines.append(f"| {name} | {label}: {a} vs {z} | {right[a].mean():.4f} | {right[z].mean():.4f} | {b} | {c} | "
                         f"{mcnemar_p(b, c):.2f} |")
            print(lines[-1], flush=True)
    RESULTS.write_text("\n".join(lines) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
