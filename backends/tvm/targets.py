"""Targets as data: a name -> the TVM target, the cross compiler and the schedules it uses.

`qcompiler targets` prints this table. The x86 entry is the host: its CPU is asked of LLVM,
and the VNNI kernels are used when /proc/cpuinfo shows avx512_vnni. Every target gets the
NHWC layout and the generic vectorizing rules (schedules/cpu_generic.py); the dotprod target
uses the sdot kernel, the i8mm target the smmla kernel (sdot where smmla cannot apply).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field

from qcompiler.errors import UsageError


@dataclass(frozen=True)
class TargetSpec:
    name: str
    description: str
    llvm: dict                      # the TVM target as a JSON dict (kind llvm)
    cross_compiler: str | None      # executable that links the library, None for the host compiler
    apt_package: str | None         # the Debian package that provides it
    schedules: tuple[str, ...] = ()  # schedule templates the default build applies (none: TVM's generic code)
    runner: str | None = None       # how the host runs it (qemu) when it is not native
    notes: str = field(default="")

    @property
    def host(self) -> bool:
        return self.cross_compiler is None

    def compiler_available(self) -> bool:
        return self.cross_compiler is None or shutil.which(self.cross_compiler) is not None


_ARM = dict(cross_compiler="aarch64-linux-gnu-gcc", apt_package="gcc-aarch64-linux-gnu", runner="qemu-aarch64")

TARGETS: dict[str, TargetSpec] = {t.name: t for t in (
    TargetSpec("x86", "this machine (x86-64): AVX-512 VNNI kernels when the CPU has them",
               {"kind": "llvm", "mcpu": "native"}, None, None, ("int8-vnni", "nhwc-vectorize")),
    TargetSpec("arm64", "AArch64 with NEON (Cortex-A53/A72 class)",
               {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]}, schedules=("nhwc-vectorize",), **_ARM),
    TargetSpec("arm64-dotprod", "AArch64 v8.2 with sdot (Cortex-A76 / Neoverse-N1 class)",
               {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a76",
                "mattr": ["+neon", "+v8.2a", "+dotprod"]}, schedules=("int8-sdot", "nhwc-vectorize"), **_ARM),
    TargetSpec("arm64-i8mm", "AArch64 v8.6 with smmla (Neoverse-V1 / Cortex-A710 class)",
               {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "neoverse-v1",
                "mattr": ["+neon", "+v8.6a", "+dotprod", "+i8mm"]},
               schedules=("int8-smmla", "int8-sdot", "nhwc-vectorize"), **_ARM),
)}


def get_target(name: str) -> TargetSpec:
    if name not in TARGETS:
        raise UsageError(f"unknown target {name!r}; the known targets are: {', '.join(TARGETS)} "
                         "(`qcompiler targets` describes them)")
    return TARGETS[name]


def tvm_target(spec: TargetSpec):
    """The tvm.target.Target for a spec; 'native' becomes the host CPU's name as LLVM knows it."""
    import tvm
    from tvm.target import codegen

    llvm = dict(spec.llvm)
    if llvm.get("mcpu") == "native":
        llvm["mcpu"] = codegen.llvm_get_system_cpu()
    return tvm.target.Target(llvm)


def host_has_vnni() -> bool:
    """Whether this x86 CPU has AVX-512 VNNI (vpdpbusd), from /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return "avx512_vnni" in f.read()
    except OSError:
        return False
