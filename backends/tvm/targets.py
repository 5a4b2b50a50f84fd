"""Targets as data: a name -> the TVM target, the dot-product kernels, the cross compiler and the
runner, each field read by the build, `model.json` and `qcompiler run`.

`qcompiler targets` prints this table. The named x86 targets are portable (an x86-64-v3 library
runs on any AVX2 CPU); `native` is this machine's CPU as LLVM names it, with the VNNI kernels
when /proc/cpuinfo shows avx512_vnni and the AVX2 ones (exact vpmaddwd) when it shows only avx2
(`x86`, the old name, means `native`). Every target gets the
NHWC layout and the generic vectorizing rules (schedules/cpu_generic.py) and the depthwise and
residual-add kernels; `dot_kernels` lists the convolution kernels it may use, preferred first
(smmla falls back to sdot where it cannot apply). `--target` also takes a TVM target string or
JSON ("llvm -mcpu=znver4", '{"kind": "llvm", "mtriple": "aarch64-linux-gnu", ...}'), from whose
features the kernels, compiler and runner are chosen the same way.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import shutil
from dataclasses import dataclass

from qcompiler.backends.tvm.runtime import cpu_flags
from qcompiler.errors import UsageError

QEMU_AARCH64 = "qemu-aarch64"


@dataclass(frozen=True)
class TargetSpec:
    name: str
    description: str
    llvm: dict                       # the TVM target as a JSON dict (kind llvm)
    cross_compiler: str | None = None   # executable that links the library; None: the host compiler
    apt_package: str | None = None      # the Debian package that provides it
    dot_kernels: tuple[str, ...] = ()   # "vnni", "avx2", "smmla", "sdot", "vrmpy": convolution kernels, preferred first
    runner: str | None = None        # how this host runs the library when not in process (qemu-aarch64)
    cpu_flags: tuple[str, ...] = ()  # /proc/cpuinfo flags an x86 CPU needs to run the library here
    #: Elements per vector the generic rules split loops by (schedules/cpu_generic.py): 16 on
    #: every target, the value the schedules were written and measured with; others untested.
    vector_lanes: int = 16
    #: "c": no TVM runtime on the device; the build writes the kernels and a C driver over a
    #: static memory plan (backends/tvm/hexagon.py). None: a TVM library (model.so).
    driver: str | None = None

    @property
    def host(self) -> bool:
        """Whether the library runs in this process (so `compile` can check it against the QDQ model)."""
        return self.runner is None and self.cross_compiler is None and _host_has(self.cpu_flags)

    @property
    def dot_kernel(self) -> str | None:
        """The preferred dot-product kernel (None: TVM's generic code for convolutions)."""
        return self.dot_kernels[0] if self.dot_kernels else None

    def compiler_available(self) -> bool:
        return self.cross_compiler is None or shutil.which(self.cross_compiler) is not None


_ARM = dict(cross_compiler="aarch64-linux-gnu-gcc", apt_package="gcc-aarch64-linux-gnu", runner=QEMU_AARCH64)
#: Hexagon: HVX with 128-byte vectors, no HVX floating point (qemu 7.2 has none, and the
#: quantized kernels need none): float code at the model's edges stays scalar IEEE.
_HEXAGON = dict(cross_compiler="ld.lld-14", apt_package="lld-14", runner="qemu-hexagon", driver="c",
                dot_kernels=("vrmpy",))
_V3 = ("avx2", "fma", "bmi2", "movbe")
_V4 = (*_V3, "avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl")
#: The x86 convolution kernels, preferred first: the /proc/cpuinfo flags a CPU needs to run each.
_X86_KERNEL_FLAGS = {"vnni": (*_V4, "avx512_vnni"), "avx2": _V3}
#: ... and the LLVM feature that tells a target's CPU has the kernel's instruction.
_X86_KERNEL_FEATURES = {"vnni": "avx512vnni", "avx2": "avx2"}

TARGETS: dict[str, TargetSpec] = {t.name: t for t in (
    TargetSpec("native", "this machine's CPU (x86-64): AVX-512 VNNI kernels when it has them, else AVX2 ones",
               {"kind": "llvm", "mcpu": "native"}),
    TargetSpec("x86-64-v3", "any x86-64 CPU with AVX2 (Haswell, Zen 1 and later): AVX2 kernels",
               {"kind": "llvm", "mcpu": "x86-64-v3"}, dot_kernels=("avx2",), cpu_flags=_V3),
    TargetSpec("x86-64-v4", "any x86-64 CPU with AVX-512 (Skylake-X, Zen 4 and later): AVX2 kernels",
               {"kind": "llvm", "mcpu": "x86-64-v4"}, dot_kernels=("avx2",), cpu_flags=_V4),
    TargetSpec("x86-avx512-vnni", "x86-64 with AVX-512 VNNI (Cascade Lake, Ice Lake, Zen 4 and later)",
               {"kind": "llvm", "mcpu": "x86-64-v4", "mattr": ["+avx512vnni"]}, dot_kernels=("vnni",),
               cpu_flags=_X86_KERNEL_FLAGS["vnni"]),
    TargetSpec("arm64", "AArch64 with NEON (Cortex-A53/A72 class)",
               {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]}, **_ARM),
    TargetSpec("arm64-dotprod", "AArch64 v8.2 with sdot (Cortex-A76 / Neoverse-N1 class)",
               {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a76",
                "mattr": ["+neon", "+v8.2a", "+dotprod"]}, dot_kernels=("sdot",), **_ARM),
    TargetSpec("arm64-i8mm", "AArch64 v8.6 with smmla (Neoverse-V1 / Cortex-A710 class)",
               {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "neoverse-v1",
                "mattr": ["+neon", "+v8.6a", "+dotprod", "+i8mm"]}, dot_kernels=("smmla", "sdot"), **_ARM),
    TargetSpec("hexagon-v68", "Qualcomm Hexagon v68 DSP with HVX 128-byte vectors (Snapdragon 888 class): C driver",
               {"kind": "hexagon", "mtriple": "hexagon", "mcpu": "hexagonv68", "mattr": ["+hvxv68", "+hvx-length128b"],
                "num-cores": 4, "vtcm-capacity": 4 << 20},
               **_HEXAGON),
    TargetSpec("hexagon-v73", "Qualcomm Hexagon v73 DSP with HVX 128-byte vectors (Snapdragon 8 Gen 2 class): C driver",
               {"kind": "hexagon", "mtriple": "hexagon", "mcpu": "hexagonv73", "mattr": ["+hvxv73", "+hvx-length128b"],
                "num-cores": 4, "vtcm-capacity": 8 << 20},
               **_HEXAGON),
)}

#: Old names still accepted.
ALIASES = {"x86": "native"}


def get_target(name: str) -> TargetSpec:
    """A named target (native resolved for this host), or one made from a TVM target string/JSON."""
    name = ALIASES.get(name, name)
    if name == "native":
        return native_target()
    if name in TARGETS:
        return TARGETS[name]
    if name.lstrip().startswith(("llvm", "{")):
        return from_tvm_target(name)
    raise UsageError(f"unknown target {name!r}; the known targets are: {', '.join(TARGETS)} "
                     "(`qcompiler targets` describes them), or give a TVM target string such as 'llvm -mcpu=znver3'")


def native_target() -> TargetSpec:
    """This host: its CPU by LLVM's name, the VNNI kernels where /proc/cpuinfo shows avx512_vnni,
    else the AVX2 ones where it shows avx2."""
    from tvm.target import codegen

    kernels = host_dot_kernels()
    kinds = {("vnni",): "AVX-512 VNNI kernels", ("avx2",): "no AVX-512 VNNI: AVX2 kernels"}
    description = f"this machine's CPU ({codegen.llvm_get_system_cpu()}, {kinds.get(kernels, 'generic int8 code')})"
    return dataclasses.replace(TARGETS["native"], description=description, dot_kernels=kernels)


def from_tvm_target(text: str) -> TargetSpec:
    """A spec for a TVM target string or JSON dict: aarch64 triples get the cross compiler and
    qemu; +i8mm and +dotprod in its features choose the ARM dot-product kernels, AVX-512 VNNI
    or else AVX2 among its CPU's features (mcpu and mattr, as LLVM knows them) the x86 ones."""
    import tvm

    try:
        llvm = json.loads(text) if text.lstrip().startswith("{") else _parse_flags(text)
        target = tvm.target.Target(llvm)
    except Exception as exc:  # noqa: BLE001 - json and tvm raise their own error types
        raise UsageError(f"--target {text!r}: not a TVM target ({str(exc).strip().splitlines()[-1][:160]})") from None
    if target.kind.name != "llvm":
        raise UsageError(f"--target {text!r}: kind {target.kind.name}; the CPU backend builds llvm targets only")
    features = " ".join(llvm.get("mattr", []))
    arm = "aarch64" in str(llvm.get("mtriple", ""))
    kernels = (("smmla", "sdot") if "+i8mm" in features else ("sdot",) if "+dotprod" in features else ()) if arm \
        else _x86_kernels(target)
    flags = _X86_KERNEL_FLAGS[kernels[0]] if kernels and not arm else ()   # never run them on a CPU without them
    return TargetSpec(json.dumps(llvm), "a TVM target given on the command line", llvm, dot_kernels=kernels,
                      cpu_flags=flags, **(_ARM if arm else {}))


def _parse_flags(text: str) -> dict:
    """'llvm -mcpu=znver3 -mattr=+avx2,+fma' as TVM's JSON dict (TVM 0.27 reads only JSON)."""
    kind, *flags = text.split()
    llvm: dict = {"kind": kind}
    for flag in flags:
        key, sep, value = flag.lstrip("-").partition("=")
        if not sep or not flag.startswith("-"):
            raise ValueError(f"{flag!r}: expected -key=value")
        llvm[key] = value.split(",") if key == "mattr" else value
    return llvm


def tvm_target(spec: TargetSpec):
    """The tvm.target.Target for a spec; 'native' becomes the host CPU's name as LLVM knows it."""
    import tvm
    from tvm.target import codegen

    llvm = dict(spec.llvm)
    if llvm.get("mcpu") == "native":
        llvm["mcpu"] = codegen.llvm_get_system_cpu()
    return tvm.target.Target(llvm)


def describe_target(spec: TargetSpec) -> str:
    """Three lines for `qcompiler targets`: what it is, the TVM target, how it links and runs."""
    if spec.name == "native":
        spec = native_target()
    compiler = "host compiler" if spec.cross_compiler is None else (
        f"{spec.cross_compiler} ({'found' if spec.compiler_available() else 'missing: apt-get install ' + spec.apt_package})")
    runs = "in process" if spec.host else spec.runner or "not on this machine (its CPU lacks the features)"
    shown = json.dumps(spec.llvm) if spec.name != "native" else f"{json.dumps(spec.llvm)} = {tvm_target(spec)}"
    return (f"{spec.name:<16} {spec.description}\n{'':<16} tvm target: {shown}\n"
            f"{'':<16} kernels: {', '.join(spec.dot_kernels) or 'generic'}, {spec.vector_lanes} lanes; linker: {compiler}; "
            f"runs here: {runs}")


def _host_has(flags: tuple[str, ...]) -> bool:
    return platform.machine() in ("x86_64", "AMD64") and set(flags) <= (cpu_flags() or frozenset())


def _x86_kernels(target) -> tuple[str, ...]:
    """The preferred x86 kernel whose instruction the target's CPU and -mattr have, or ()."""
    from tvm.target import codegen

    return next(((k,) for k, feature in _X86_KERNEL_FEATURES.items() if codegen.target_has_features(feature, target)),
                ())


def host_dot_kernels() -> tuple[str, ...]:
    """The x86 convolution kernels this CPU runs, from /proc/cpuinfo: ("vnni",), ("avx2",) or ()."""
    flags = cpu_flags() or frozenset()
    return next(((k,) for k, needed in _X86_KERNEL_FLAGS.items() if set(needed) <= flags), ())
