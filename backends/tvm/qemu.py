"""Running aarch64 libraries on an x86 host under qemu-aarch64 (correctness only, never timing).

scripts/setup_aarch64.sh makes the environment: an arm64 Python unpacked from Debian packages,
the aarch64 wheels of apache-tvm, apache-tvm-ffi and numpy, and a `python` wrapper that starts it
under qemu with this repository's root importable. The library then runs through the runtime
script (backends/tvm/runtime.py, which needs only numpy, the TVM runtime and qcompiler/errors.py),
as it would on an ARM board.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from qcompiler.errors import QCompilerError, UsageError

REPO = Path(__file__).resolve().parents[2]
SETUP = "scripts/setup_aarch64.sh"
RUNTIME_SCRIPT = Path(__file__).resolve().with_name("runtime.py")


def environment() -> Path:
    """The aarch64 Python wrapper: $QCOMPILER_AARCH64 or the repository's .aarch64/."""
    root = Path(os.environ.get("QCOMPILER_AARCH64", REPO / ".aarch64"))
    python = root / "python"
    if not python.is_file():
        raise UsageError(f"no aarch64 environment at {root}: run `{SETUP}` from the qcompiler repository "
                         "(or run the library on an ARM machine with `python -m qcompiler.runtime`)")
    return python


def run(library_dir: Path, feeds: dict[str, np.ndarray], timeout: float = 600) -> dict[str, np.ndarray]:
    python = environment()
    with tempfile.TemporaryDirectory() as work:
        inputs, outputs = Path(work) / "inputs.npz", Path(work) / "outputs.npz"
        np.savez(inputs, **feeds)
        done = subprocess.run([str(python), str(RUNTIME_SCRIPT), str(Path(library_dir).resolve()),
                               "--input", str(inputs), "-o", str(outputs)],
                              capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise QCompilerError(f"the library failed under qemu-aarch64 (exit {done.returncode}): {last}")
        with np.load(outputs, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}


class QemuLibrary:
    """A compiled aarch64 library folder, run under qemu (the `run` of the runtime's CompiledModel;
    no `time` or `profile`: emulated time says nothing of the device's)."""

    def __init__(self, folder: str | Path):
        from qcompiler.backends.tvm.runtime import read_metadata

        self.folder = Path(folder)
        self.meta = read_metadata(folder)
        self.inputs, self.outputs = self.meta["inputs"], self.meta["outputs"]

    def __repr__(self) -> str:
        from qcompiler.backends.tvm.runtime import describe

        return describe(self)[:-1] + ", under qemu-aarch64>"

    def run(self, feeds: dict[str, np.ndarray] | np.ndarray) -> dict[str, np.ndarray]:
        from qcompiler.backends.tvm.runtime import as_feeds

        return run(self.folder, as_feeds(self.inputs, feeds))
