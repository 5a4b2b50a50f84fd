"""`qcompiler demo`: the main job on the bundled ResNet-8, as a user types it: inspect, optimize,
quantize (W8A8, evaluated on held-out images), compile for this machine, run the library."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


#: What the demo writes into its folder.
DEMO_OUTPUTS = ("calibration.npz", "evaluation.npz", "model.opt.onnx", "model.qdq.onnx", "report.html", "library")


def run_demo(out: Path, force: bool = False) -> int:
    """The steps run in a staging folder inside `out`; their files move into `out` when all succeeded."""
    from qcompiler.files import OutputSet

    outputs = OutputSet(out, DEMO_OUTPUTS, force=force)
    outputs.check()
    try:
        with outputs.staging() as stage:
            code = _steps(stage, out)
            if code:
                raise _StepFailed(code)
    except _StepFailed as failed:   # it printed its error; the staging folder is gone
        return failed.code
    return 0


class _StepFailed(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def _steps(stage: Path, out: Path) -> int:
    """Each step as a user types it (shown with the final folder `out`), run into `stage`."""
    from qcompiler import models
    from qcompiler.cli import main

    model_path, data_path = models.path(models.DEFAULT_MODEL), models.path(models.FASHION_SUBSET)
    # Calibrate on the first 150 bundled test images, evaluate on the other 150: no overlap.
    data = np.load(data_path, allow_pickle=False)
    np.savez(stage / "calibration.npz", input=data["input"][:150])
    np.savez(stage / "evaluation.npz", input=data["input"][150:], labels=data["labels"][150:])
    progress = [] if sys.stderr.isatty() else ["--no-progress"]
    name = model_path.name
    steps = [
        ("inspect {model}", ["inspect", model_path]),
        ("optimize {model} -o {out}/model.opt.onnx", ["optimize", model_path, "-o", stage / "model.opt.onnx"]),
        ("quantize {model} --calib {out}/calibration.npz --eval {out}/evaluation.npz --preset w8a8 -o {out}",
         ["quantize", model_path, "--calib", stage / "calibration.npz", "--eval", stage / "evaluation.npz",
          "--preset", "w8a8", "-o", stage, *progress]),
        ("compile {out}/model.qdq.onnx -o {out}/library", ["compile", stage / "model.qdq.onnx", "-o", stage / "library"]),
        ("run {out}/library --input {out}/evaluation.npz", ["run", stage / "library", "--input", stage / "evaluation.npz"])]
    for index, (shown, argv) in enumerate(steps):
        print(f"{chr(10) if index else ''}== qcompiler {shown.format(model=name, out=out)}")
        code = main([str(a) for a in argv])  # the parser's defaults, as a user gets them
        if code:
            return code
    return _agreement(stage / "library", stage / "model.qdq.onnx", data["input"][150:])


def _agreement(library_dir: Path, qdq_path: Path, images: np.ndarray) -> int:
    """The library against the QDQ model on the held-out images, in output LSBs."""
    from qcompiler import ir
    from qcompiler.fidelity import compare
    from qcompiler.runtime import load

    for fidelity in compare(ir.load(qdq_path).to_onnx(), load(library_dir), {"input": images}):
        print(f"library vs QDQ model (onnxruntime): {fidelity.line()}")
    return 0
