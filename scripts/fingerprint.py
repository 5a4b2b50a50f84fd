"""sha256 of what `qcompiler quantize` and `compile` write for the bundled models: run before and
after a refactor that must not change behaviour, and compare the two listings.

    python scripts/fingerprint.py > before.txt   ...   python scripts/fingerprint.py > after.txt
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from qcompiler import models

RUNS = [("fashion_resnet8.onnx", "w8a8"), ("fashion_resnet8.onnx", "w4a8"), ("fashion_mobilenetv2.onnx", "w8a8")]
#: Each QDQ model is also built for these (the dot-product kernels a native build may not use here).
CROSS = ("x86-avx512-vnni", "arm64-dotprod", "arm64-i8mm")


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        calib = Path(tmp) / "calib.npz"
        np.savez(calib, input=np.load(models.path(models.FASHION_SUBSET))["input"][:64])
        for name, preset in RUNS:
            out = Path(tmp) / f"{name}-{preset}"
            subprocess.run([sys.executable, "-m", "qcompiler.cli", "compile", str(models.path(name)), "--calib",
                            str(calib), "--preset", preset, "--no-progress", "-o", str(out)], check=True,
                           stdout=subprocess.DEVNULL)
            print(f"{name} {preset}: model.qdq.onnx {sha(out / 'model.qdq.onnx')}  model.so {sha(out / 'model.so')}")
            for target in CROSS:
                subprocess.run([sys.executable, "-m", "qcompiler.cli", "compile", str(out / "model.qdq.onnx"),
                                "--target", target, "-o", str(out / target)], check=True, stdout=subprocess.DEVNULL)
                print(f"{name} {preset} {target}: model.so {sha(out / target / 'model.so')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
