"""`qcompiler demo`: the main job on the bundled ResNet-8, as a user types it: inspect, optimize,
quantize (W8A8, evaluated on held-out images), compile for this machine, run the library."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


def run_demo(out: Path) -> int:
    from qcompiler import models
    from qcompiler.cli import main

    model_path, data_path = models.path(models.DEFAULT_MODEL), models.path(models.FASHION_SUBSET)
    out.mkdir(parents=True, exist_ok=True)
    # Calibrate on the first 150 bundled test images, evaluate on the other 150: no overlap.
    data = np.load(data_path, allow_pickle=False)
    calib, held_out = out / "calibration.npz", out / "evaluation.npz"
    np.savez(calib, input=data["input"][:150])
    np.savez(held_out, input=data["input"][150:], labels=data["labels"][150:])
    library = out / "library"
    progress = [] if sys.stderr.isatty() else ["--no-progress"]
    name = model_path.name
    steps = [
        (f"inspect {name}", ["inspect", model_path]),
        (f"optimize {name} -o {out / 'model.opt.onnx'}", ["optimize", model_path, "-o", out / "model.opt.onnx"]),
        (f"quantize {name} --calib {calib} --eval {held_out} --preset w8a8 -o {out}",
         ["quantize", model_path, "--calib", calib, "--eval", held_out, "--preset", "w8a8", "-o", out, *progress]),
        (f"compile {out / 'model.qdq.onnx'} -o {library}", ["compile", out / "model.qdq.onnx", "-o", library]),
        (f"run {library} --input {held_out}", ["run", library, "--input", held_out])]
    for index, (shown, argv) in enumerate(steps):
        print(f"{chr(10) if index else ''}== qcompiler {shown}")
        code = main([str(a) for a in argv])  # the parser's defaults, as a user gets them
        if code:
            return code
    return _agreement(library, out / "model.qdq.onnx", data["input"][150:])


def _agreement(library_dir: Path, qdq_path: Path, images: np.ndarray) -> int:
    """The library against the QDQ model on the held-out images, in output LSBs."""
    from qcompiler import ir
    from qcompiler.fidelity import compare
    from qcompiler.runtime import load

    for fidelity in compare(ir.load(qdq_path).to_onnx(), load(library_dir), {"input": images}):
        print(f"library vs QDQ model (onnxruntime): {fidelity.line()}")
    return 0
