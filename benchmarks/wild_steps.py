"""Every corpus model through the steps the test suite runs on a few only: BRECQ (W4A8, a few
iterations per block) and a library for arm64 (sdot kernels) checked under qemu-aarch64.

    python benchmarks/wild_steps.py [--iters 2] [--only NAME]   # writes benchmarks/results/wild_steps.md

Per model (qcompiler.models.recipes.corpus, every opset): the command's exit (0, or the error),
the BRECQ summary (blocks, block output error nearest -> learned, seconds), and the arm64 library
against its QDQ model as written in onnxruntime on 4 samples (compile's own check under qemu:
largest difference in LSBs of the output scale, share of exact elements). Needs
scripts/setup_aarch64.sh. Random weights and inputs: this is about the compiler going through,
not accuracy.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

import qcompiler
from qcompiler.cli import main as cli
from qcompiler.models.recipes import corpus

RESULTS = Path(__file__).resolve().parent / "results" / "wild_steps.md"


def _run(args: list[str]) -> tuple[int, str, float]:
    """The CLI in this process: (exit code, what it printed, seconds)."""
    import contextlib
    import io

    out = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()) as err:
        code = cli([str(a) for a in args])
    return code, out.getvalue() + err.getvalue(), time.perf_counter() - start


def _row(name: str, opset: int, folder: Path, iters: int) -> str:
    proto = corpus.build(name, opset)
    model, calib = folder / "model.onnx", folder / "calib.npz"
    onnx.save_model(proto, str(model))
    np.savez(calib, **corpus.sample_inputs(proto, 8))
    code, out, seconds = _run(["quantize", model, "--calib", calib, "--preset", "w4a8", "--reconstruct", "brecq",
                               "--iters", iters, "--act-iters", max(iters // 2, 1), "--no-progress",
                               "-o", folder / "brecq", "--force"])
    found = re.search(r"reconstruction\s+(.*?): (\d+) blocks, block output error (\S+) -> (\S+)", out)
    brecq = (f"{found.group(2)} blocks, {found.group(3)} -> {found.group(4)}, {seconds:.0f} s" if code == 0 and found
             else f"exit {code}: {out.strip().splitlines()[-1][:80] if out.strip() else ''}")
    code, out, seconds = _run(["compile", model, "--calib", calib, "--target", "arm64-dotprod", "--no-progress",
                               "-o", folder / "arm64", "--force"])
    line = next((row for row in out.splitlines() if row.startswith("library vs QDQ model")), "")
    arm64 = (f"{line.split(': ', 1)[1]} ({seconds:.0f} s)" if code == 0 and line
             else f"exit {code}: {out.strip().splitlines()[-1][:80] if out.strip() else ''}")
    return f"| {name}-opset{opset} | {brecq} | {arm64} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=2, help="BRECQ iterations per block (a quarter more for steps)")
    parser.add_argument("--only", help="only corpus models whose name contains this")
    args = parser.parse_args()
    rows = []
    for name, opset in corpus.CORPUS:
        if args.only and args.only not in f"{name}-opset{opset}":
            continue
        with tempfile.TemporaryDirectory() as tmp:
            rows.append(_row(name, opset, Path(tmp), args.iters))
        print(rows[-1], flush=True)
    text = (f"# Models from the wild: BRECQ and arm64 on every corpus model\n\n`python benchmarks/wild_steps.py --iters "
            f"{args.iters}` on {platform.machine()} ({os.cpu_count()} cores), qcompiler {qcompiler.__version__}. "
            f"8 random calibration inputs; BRECQ at W4A8 with {args.iters}+{max(args.iters // 2, 1)} iterations per "
            "block; the arm64-dotprod library at W8A8, checked by compile under qemu-aarch64 on 4 samples against "
            "the QDQ model as written.\n\n| model | BRECQ (blocks, block output error nearest -> learned, time) | "
            "arm64 library vs QDQ model (under qemu) |\n|---|---|---|\n" + "\n".join(rows) + "\n")
    RESULTS.write_text(text)
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    sys.exit(main())
