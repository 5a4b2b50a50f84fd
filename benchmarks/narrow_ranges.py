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
"""

from __future__ import annotations

import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ptq_accuracy import run_onnxruntime_quantizer  # noqa: E402

import qcompiler  # noqa: E402
from qcompiler.executor import session  # noqa: E402
from qcompiler.fidelity import run_reference  # noqa: E402
from qcompiler.models.recipes import corpus  # noqa: E402

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


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        rows = measure(Path(tmp))
    table = ["| quantizer | boxes SQNR (dB) | scores SQNR (dB) |", "|---|---|---|"]
    table += [f"| {name} | {boxes:.1f} | {scores:.1f} |" for name, boxes, scores in rows]
    text = (f"# Outputs of very different ranges in one tensor\n\n`python benchmarks/narrow_ranges.py` on "
            f"{platform.machine()}, qcompiler {qcompiler.__version__}. The corpus tflite_net (box offsets about +-250 "
            "concatenated with scores about +-3 in one output), W8A8 per-channel, 32 calibration and 64 held-out "
            "random inputs; SQNR of each part of the output against the float model, both QDQ models run as written "
            "in onnxruntime.\n\n" + "\n".join(table) + "\n")
    print(text)
    RESULTS.write_text(text)
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
