"""Running a Hexagon library folder under qemu-hexagon (Linux user mode): correctness only; qemu
has no timing model of the DSP.

The folder's driver, runtime hooks, constants and kernels are linked by Debian's clang and
ld.lld into a freestanding test program (c_runtime/qc_freestanding.c has its system calls and
the few C library functions), which reads the inputs from stdin as raw bytes, runs the model
once per batch and writes the outputs to stdout. `qemu-hexagon -cpu v67` runs v68/v73 HVX code
(the HVX instructions the kernels use exist since v66; qemu 7.2 names no later core).
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import numpy as np

from qcompiler.backends.tvm.hexagon_codegen import LLVM_OPTIONS
from qcompiler.errors import QCompilerError, UsageError

CFLAGS = ["--target=hexagon-unknown-linux-musl", "-O2", "-ffreestanding", "-nostdlib", "-G0",
          "-mhvx", "-mhvx-length=128B", "-Wall", "-Werror=implicit-function-declaration",
          # the driver too without slot-1-store/slot-0-load packets, which qemu-hexagon 7.2 can get
          # wrong (hexagon_codegen.LLVM_OPTIONS; a DSP runs them right, so the SDK Makefile keeps them)
          *(arg for option in LLVM_OPTIONS for arg in ("-mllvm", option))]
SETUP = "scripts/setup_hexagon.sh"


def tools_ready() -> None:
    """Raises UsageError naming what is missing (clang-14, ld.lld-14, qemu-hexagon) and the setup script."""
    from qcompiler.backends.tvm.hexagon import APT_PACKAGES, tools_missing

    missing = tools_missing()
    if missing:
        raise UsageError(f"running a Hexagon library here needs {', '.join(missing)}: run `{SETUP}` "
                         f"(apt-get install {APT_PACKAGES})")


def test_main(meta: dict) -> str:
    """qc_test_main.c: stdin -> inputs, qc_model_run, outputs -> stdout."""
    from qcompiler.backends.tvm.c_driver import _c_type

    inputs, outputs = list(meta["inputs"].values()), list(meta["outputs"].values())
    lines = ['#include <stdint.h>', '#include "qc_model.h"',
             "long qc_read_all(int fd, void* buffer, long n);", "long qc_write_all(int fd, const void* buffer, long n);",
             "void qc_exit(int code);", ""]
    args = []
    for kind, values in (("in", inputs), ("out", outputs)):
        for k, value in enumerate(values):
            size = int(np.prod(value["shape"]))
            lines.append(f"static {_c_type(value['dtype'])} {kind}{k}[{size}] __attribute__((aligned(128)));")
            args.append(f"{kind}{k}")
    lines += ["", TRACE_SOURCE, "void _start(void) {"]
    lines += [f"  if (qc_read_all(0, in{k}, sizeof in{k}) != sizeof in{k}) qc_exit(100);" for k in range(len(inputs))]
    lines += [f"  int failed = qc_model_run({', '.join(args)});",
              "  if (failed) qc_exit(failed > 99 ? 99 : failed);   /* 1 + the kernel that failed */"]
    lines += [f"  qc_write_all(1, out{k}, sizeof out{k});" for k in range(len(outputs))]
    lines += ["  qc_exit(0);", "}", ""]
    return "\n".join(lines)


#: With -DQC_TRACE: each kernel's output to stderr as (int32 step, int32 bytes, bytes).
TRACE_SOURCE = """#ifdef QC_TRACE
#include "qc_runtime.h"
void qc_trace(int step, const qc_tensor* tensor) {
  int32_t header[2] = {step, (tensor->dtype.bits + 7) / 8};
  for (int i = 0; i < tensor->ndim; i++) header[1] *= (int32_t)tensor->shape[i];
  qc_write_all(2, header, sizeof header);
  qc_write_all(2, tensor->data, header[1]);
}
#endif
"""


def build_test_program(folder: Path, work: Path, meta: dict, trace: bool = False) -> Path:
    """Compile and link the folder's driver into a freestanding program under `work`."""
    from qcompiler.backends.tvm.hexagon import CLANG, LINKER, runtime_source

    tools_ready()
    work = Path(work)
    (work / "qc_test_main.c").write_text(test_main(meta), encoding="utf-8")
    (work / "qc_freestanding.c").write_text(runtime_source("qc_freestanding.c"), encoding="utf-8")
    # The driver is scalar C: built for v68 (Debian's clang 14 knows no later core) it runs
    # with kernels for any later one.
    flags = [*CFLAGS, "-mv68", f"-I{folder}", *(["-DQC_TRACE"] if trace else [])]
    objects = []
    for source in (folder / "qc_model.c", folder / "qc_runtime.c", work / "qc_test_main.c",
                   work / "qc_freestanding.c", folder / "model_weights.S"):
        obj = work / (source.stem + ".o")
        _run([CLANG, *flags, "-c", str(source), "-o", str(obj)], f"compiling {source.name}", cwd=folder)
        objects.append(str(obj))
    program = work / ("model_trace" if trace else "model_test")
    _run([LINKER, "-static", "-e", "_start", *objects, str(folder / "model_hvx.o"), "-o", str(program)],
         "linking the test program")
    return program


def _run(command: list[str], what: str, cwd=None) -> None:
    done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=cwd)
    if done.returncode != 0:
        detail = next((line for line in done.stderr.splitlines() if "error" in line), done.stderr.strip()[:300])
        raise QCompilerError(f"{what} for qemu-hexagon failed: {detail.strip()}")


class QemuHexagonLibrary:
    """A Hexagon library folder, run under qemu-hexagon (`run` only: emulated time says nothing of
    the DSP's)."""

    def __init__(self, folder: str | Path):
        from qcompiler.backends.tvm.runtime import read_metadata

        self.folder = Path(folder).resolve()
        self.meta = read_metadata(folder)
        self.inputs, self.outputs = self.meta["inputs"], self.meta["outputs"]
        self._work = tempfile.TemporaryDirectory(prefix="qc-hexagon-")
        self._program = build_test_program(self.folder, Path(self._work.name), self.meta)

    def __repr__(self) -> str:
        from qcompiler.backends.tvm.runtime import describe

        return describe(self)[:-1] + ", under qemu-hexagon>"

    def run(self, feeds, timeout: float = 600) -> dict[str, np.ndarray]:
        from qcompiler.backends.tvm.runtime import checked_inputs, run_in_batches

        arrays, samples = checked_inputs(self.inputs, feeds)
        outputs = run_in_batches(arrays, samples, self.meta["batch"], lambda chunk: self._run_batch(chunk, timeout))
        return dict(zip(self.outputs, outputs))

    def trace(self, feeds, timeout: float = 600) -> list[bytes]:
        """Each kernel's outputs (raw bytes, in call order) for the first batch of `feeds`."""
        from qcompiler.backends.tvm.runtime import checked_inputs, padded_batch

        if not hasattr(self, "_tracer"):
            self._tracer = build_test_program(self.folder, Path(self._work.name), self.meta, trace=True)
        arrays, _ = checked_inputs(self.inputs, feeds)
        batch = self.meta["batch"]
        stderr = self._execute(self._tracer, padded_batch([a[:batch] for a in arrays], batch), timeout).stderr
        outputs, offset = [], 0
        while offset < len(stderr):
            _, size = np.frombuffer(stderr[offset:offset + 8], dtype=np.int32)
            outputs.append(stderr[offset + 8:offset + 8 + size])
            offset += 8 + int(size)
        return outputs

    def _execute(self, program: Path, arrays: list[np.ndarray], timeout: float):
        """Run the program on one batch of inputs (in model.json order, checked)."""
        from qcompiler.backends.tvm.hexagon import QEMU

        data = b"".join(np.ascontiguousarray(a).tobytes() for a in arrays)
        done = subprocess.run([QEMU, "-cpu", "v67", str(program)], input=data, capture_output=True,
                              timeout=timeout, check=False)
        if done.returncode != 0:
            code = done.returncode
            why = (f"killed by signal {-code}: a crash in the kernels or the driver" if code < 0
                   else f"kernel call {code} of qc_model.c returned an error" if code < 99
                   else "the test program read too few input bytes" if code == 100 else f"exit {code}")
            raise QCompilerError(f"the library {self.folder} failed under qemu-hexagon ({why})")
        return done

    def _run_batch(self, arrays: list[np.ndarray], timeout: float) -> list[np.ndarray]:
        done = self._execute(self._program, arrays, timeout)
        outputs, offset = [], 0
        for spec in self.outputs.values():
            size = int(np.prod(spec["shape"])) * np.dtype(spec["dtype"]).itemsize
            outputs.append(np.frombuffer(done.stdout[offset:offset + size], dtype=spec["dtype"]).reshape(spec["shape"]))
            offset += size
        if offset != len(done.stdout):
            raise QCompilerError(f"the library under qemu-hexagon wrote {len(done.stdout)} bytes, expected {offset}")
        return outputs

