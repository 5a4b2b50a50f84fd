"""Hexagon libraries: HVX kernels (model_hvx.o / model_hvx.so) and a generated C driver that runs
the graph with a static memory plan, so that no TVM runtime is needed on the DSP.

The build shares everything with the CPU targets up to the scheduled integer module (import,
integer rewrite, NHWC layout, kernels, generic rules); then Relax plans the memory, the
kernels go through TVM's Hexagon code generator (hexagon_codegen.py) and the plan becomes C
(c_driver.py). What a library folder holds:

    model_hvx.o        the kernels, for static linking with the driver (the qemu test does this)
    model_hvx.so       the same kernels as a shared object (ld.lld -shared), for a loader on the DSP
    qc_model.h/.c      the driver: qc_model_run(in0, ..., out0, ...) over static storages
    model_weights.bin  the constants, and model_weights.S that includes them as read-only data
    qc_runtime.h/.c    the hooks TVM's kernels call (workspace, a no-op device call)
    Makefile           builds libqc_model.a with the Hexagon SDK's toolchain (hexagon-clang)
    hvx_cost.md        packets, HVX and vrmpy instructions per kernel, from the disassembly
    model.json, model.qdq.onnx  as for every target

Float code is refused (exit 4) unless asked for: a DSP library that falls back to scalar float
is slow where the user expects HVX. The model's edges (quantize of a float input, dequantize of
a float output) are scalar float in the first and last kernels, as on every target.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from qcompiler.errors import OutputError, UnsupportedModelError

CLANG, LINKER, QEMU = "clang-14", "ld.lld-14", "qemu-hexagon"
APT_PACKAGES = "clang-14 lld-14 qemu-user"
RUNTIME_FILES = ("qc_runtime.h", "qc_runtime.c")
DRIVER_FILES = ("qc_model.h", "qc_model.c", "model_weights.S", "model_weights.bin", *RUNTIME_FILES, "Makefile",
                "hvx_cost.md")
KERNEL_FILES = ("model_hvx.o", "model_hvx.so")


@dataclass
class HexagonBuild:
    """What the Hexagon build made, before it is written (Library.executable for this target)."""

    object_bytes: bytes
    plan: object            # c_driver.Plan
    arch: str               # "v68", "v73": the -mv flag for the driver and the SDK Makefile


def arch_of(spec) -> str:
    return str(spec.llvm["mcpu"]).removeprefix("hexagon")


def refuse_float(float_ops, spec, allow_float: bool) -> None:
    """Exit 4 naming the ops left in float, unless --allow-float."""
    if float_ops and not allow_float:
        shown = ", ".join(f"{op} x{n}" for op, n in sorted(float_ops.items()))
        raise UnsupportedModelError(f"target {spec.name}: {sum(float_ops.values())} op(s) would run in scalar float on "
                                    f"the DSP ({shown}); quantize them (see `qcompiler inspect`) or pass "
                                    "--allow-float to accept scalar float code")


def build_hexagon(mod, target, spec, work: Path) -> HexagonBuild:
    """Plan the scheduled module's memory, compile its kernels for Hexagon, plan the driver."""
    from qcompiler.backends.tvm import c_driver, hexagon_codegen

    planned = hexagon_codegen.planned_main(mod)
    plan = c_driver.plan(planned)
    obj = hexagon_codegen.build_object(planned, target, Path(work) / "model_hvx.o", scalar=plan.float_kernels())
    return HexagonBuild(obj.read_bytes(), plan, arch_of(spec))


def write_files(build: HexagonBuild, io: dict, description: str, stage: Path) -> list[Path]:
    """The kernels and the driver into `stage` (a staging folder: files.OutputSet renames them)."""
    from qcompiler.backends.tvm import c_driver
    from qcompiler.backends.tvm.hexagon_cost import cost_report

    stage = Path(stage)
    (stage / "model_hvx.o").write_bytes(build.object_bytes)
    _link_shared(stage / "model_hvx.o", stage / "model_hvx.so")
    (stage / "qc_model.h").write_text(c_driver.header(build.plan, io), encoding="utf-8")
    (stage / "qc_model.c").write_text(c_driver.model_source(build.plan, description), encoding="utf-8")
    (stage / "model_weights.bin").write_bytes(c_driver.weights(build.plan))
    (stage / "model_weights.S").write_text(c_driver.WEIGHTS_ASM, encoding="utf-8")
    for name in RUNTIME_FILES:
        (stage / name).write_text(runtime_source(name), encoding="utf-8")
    (stage / "Makefile").write_text(MAKEFILE.format(arch=build.arch), encoding="utf-8")
    (stage / "hvx_cost.md").write_text(cost_report(stage / "model_hvx.o", build.arch), encoding="utf-8")
    return [stage / name for name in (*KERNEL_FILES, *DRIVER_FILES)]


def runtime_source(name: str) -> str:
    return resources.files("qcompiler.backends.tvm").joinpath("c_runtime", name).read_text(encoding="utf-8")


def _link_shared(obj: Path, out: Path) -> None:
    done = subprocess.run([LINKER, "-shared", "--hash-style=sysv", "-o", str(out), str(obj)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise OutputError(f"{out}: linking the Hexagon kernels failed: {_first_error(done.stderr)}")


def _first_error(text: str) -> str:
    return next((line for line in text.splitlines() if "error" in line.lower()), text.strip()[:200]).strip()


def tools_missing() -> list[str]:
    """The executables the Hexagon target needs that are not on PATH."""
    return [tool for tool in (CLANG, LINKER, QEMU) if shutil.which(tool) is None]


MAKEFILE = """# Generated by qcompiler: builds a test program of this model with the Hexagon SDK's
# toolchain (hexagon-clang from $HEXAGON_TOOLS_ROOT/bin). Link qc_model.o, qc_runtime.o,
# model_weights.o and model_hvx.o into your own program the same way, and call
# qc_model_run() from qc_model.h. Untested here: qcompiler checks the library under
# qemu-hexagon with Debian's clang and ld.lld instead (qcompiler run).
ARCH ?= {arch}
CC := $(HEXAGON_TOOLS_ROOT)/bin/hexagon-clang
CFLAGS ?= -O2 -m$(ARCH) -mhvx -mhvx-length=128B -G0

OBJECTS := qc_model.o qc_runtime.o model_weights.o model_hvx.o

libqc_model.a: $(OBJECTS)
\t$(HEXAGON_TOOLS_ROOT)/bin/hexagon-ar rcs $@ $^

%.o: %.c qc_model.h qc_runtime.h
\t$(CC) $(CFLAGS) -c $< -o $@

model_weights.o: model_weights.S model_weights.bin
\t$(CC) $(CFLAGS) -c $< -o $@

clean:
\trm -f qc_model.o qc_runtime.o model_weights.o libqc_model.a
"""
