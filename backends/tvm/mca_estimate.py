"""Estimated time of aarch64 kernels on a named ARM core, on an x86 build machine
(`qcompiler tune --target arm64-dotprod --estimate cortex-a76`).

This is an estimate, not a measurement. Each candidate kernel is compiled for aarch64, linked
statically with a small C driver, and run once under qemu-aarch64 with its translation-block log
on (`-d in_asm,exec,nochain`). The log counts how often each straight-line block of the kernel runs.
llvm-mca (Debian's llvm) gives each block's cycles per run on its scheduling model of the core.
The kernel's cycles are the sum of count x cycles over its blocks.

It is the time on one thread (the driver runs a parallel loop on the calling thread). It
leaves out caches and memory (llvm-mca assumes every load hits L1), branch prediction, and
the core's clock: a nominal clock per core turns cycles into milliseconds. So it ranks the
tilings of one kernel on a core. To know how fast a kernel runs, measure it on a device
through `--rpc`.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from qcompiler.errors import QCompilerError, UsageError

C_RUNTIME = Path(__file__).resolve().with_name("c_runtime")
CROSS_PREFIX = "aarch64-linux-gnu-"
TOOLS = {"qemu-aarch64": "scripts/setup_aarch64.sh (qemu-user)",
         f"{CROSS_PREFIX}gcc": "scripts/setup_aarch64.sh (gcc-aarch64-linux-gnu)",
         f"{CROSS_PREFIX}objdump": "scripts/setup_aarch64.sh (binutils-aarch64-linux-gnu)",
         "llvm-mca": "scripts/setup_aarch64.sh (llvm)"}
MCA_ITERATIONS = 100


@dataclasses.dataclass(frozen=True)
class Core:
    llvm_cpu: str
    ghz: float          # a nominal clock, to turn cycles into milliseconds
    example: str


CORES = {
    "cortex-a55": Core("cortex-a55", 1.8, "the little cores of most 2018-2023 phones"),
    "cortex-a76": Core("cortex-a76", 2.4, "the big cores of 2019-2020 phones (Snapdragon 855, Kirin 980)"),
    "neoverse-n1": Core("neoverse-n1", 2.5, "AWS Graviton2, Ampere Altra"),
    "neoverse-v1": Core("neoverse-v1", 2.6, "AWS Graviton3"),
}


def get_core(name: str) -> Core:
    if name not in CORES:
        raise UsageError(f"--estimate {name!r}: llvm-mca models these cores here: {', '.join(CORES)}")
    return CORES[name]


def check_tools() -> None:
    """A UsageError naming what to install when a tool the estimate needs is missing."""
    missing = [f"{tool} ({how})" for tool, how in TOOLS.items() if shutil.which(tool) is None]
    if missing:
        raise UsageError("the llvm-mca estimate needs " + ", ".join(missing))


class Estimator:
    """The `times_ms` of tuning.Measurer, estimated for `core` instead of timed."""

    def __init__(self, target, core_name: str):
        check_tools()
        self.target, self.core = target, get_core(core_name)
        self.last_error = ""

    def times_ms(self, funcs: list) -> list[float | None]:
        return [self._ms(func) for func in funcs]

    def _ms(self, func) -> float | None:
        try:
            return kernel_cycles(func, self.target, self.core.llvm_cpu) / (self.core.ghz * 1e6)
        except QCompilerError as exc:
            self.last_error = str(exc).splitlines()[0][:200]
            return None

    def peak_gops(self, isa: str) -> float:
        """The core's dot-product peak as llvm-mca models it (independent sdot or smmla, all
        operands in registers), at the nominal clock: 2 operations per multiply-add."""
        return 2 * peak_macs_per_cycle(self.core.llvm_cpu, isa) * self.core.ghz


def peak_macs_per_cycle(cpu: str, isa: str) -> float:
    mnemonic, macs = {"sdot": ("sdot", 16), "smmla": ("smmla", 32)}[isa]
    block = [f"{mnemonic} v{i}.4s, v30.16b, v31.16b" for i in range(16)]
    (cycles,) = mca_cycles([block], cpu)
    return len(block) * macs / cycles


def kernel_cycles(func, target, cpu: str) -> float:
    """Estimated cycles of one run of the PrimFunc on `cpu`: how often each block runs (qemu)
    times llvm-mca's cycles per run of it."""
    blocks = executed_blocks(func, target)
    cycles = mca_cycles([block for _, block in blocks], cpu)
    return sum(count * c for (count, _), c in zip(blocks, cycles))


def executed_blocks(func, target) -> list[tuple[int, list[str]]]:
    """(runs, instructions) of each translation block of the kernel that ran: the PrimFunc built
    for aarch64, linked with driver_source's C, and run once under qemu-aarch64."""
    import tvm

    with tempfile.TemporaryDirectory(prefix="qcompiler-mca-") as work:
        work = Path(work)
        module = tvm.tirx.build(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=target)
        module.write_to_file(str(work / "kernel.o"))
        (work / "driver.c").write_text(driver_source(func))
        _run([f"{CROSS_PREFIX}gcc", "-O1", "-static", f"-I{C_RUNTIME}", "driver.c", str(C_RUNTIME / "qc_runtime.c"),
              "kernel.o", "-lm", "-o", "kernel.elf", "-Wl,-Map=kernel.map"], work, "linking the kernel")
        _run(["qemu-aarch64", "-d", "in_asm,exec,nochain", "-D", "tb.log", "./kernel.elf"], work,
             "running it under qemu")
        ranges = kernel_ranges(work / "kernel.map")
        counts, ends = block_counts(work / "tb.log", ranges)
        blocks = translation_blocks(work / "kernel.elf", ranges, ends, counts)
    return [(counts[pc], blocks[pc]) for pc in sorted(blocks)]


def driver_source(func) -> str:
    """C that calls the kernel once on zero-filled tensors of its argument shapes (its loops do
    not depend on the data)."""
    from tvm.s_tir import meta_schedule as ms

    from qcompiler.backends.tvm.c_driver import dl_dtype

    lines = ['#include <stdlib.h>', '#include <string.h>', '#include "qc_runtime.h"', "QC_KERNEL(main);",
             "void TVMFFIErrorSetRaisedFromCStrParts(const char* k, const char** p, int n) { (void)k, (void)p, (void)n; }",
             "static void* zeros(size_t n) { void* p = aligned_alloc(128, (n + 127) / 128 * 128); "
             "return memset(p, 0, n); }", "int main(void) {"]
    args = []
    for i, info in enumerate(ms.arg_info.ArgInfo.from_prim_func(func)):
        shape = [int(d) for d in info.shape]
        nbytes = math.prod(shape) * info.dtype.itemsize
        lines.append(f"  static int64_t s{i}[] = {{{', '.join(map(str, shape))}}};")
        lines.append(f"  qc_tensor t{i} = QC_TENSOR(zeros({nbytes}), {len(shape)}, {dl_dtype(str(info.dtype))}, s{i});")
        lines.append(f"  t{i}.device.device_type = 1;")   # kDLCPU: the kernel checks it
        args.append(f"QC_ARG(t{i})")
    lines += [f"  qc_any args[] = {{{', '.join(args)}}};", "  return QC_CALL(main, args);", "}", ""]
    return "\n".join(lines)


def kernel_ranges(link_map: Path) -> list[tuple[int, int]]:
    """[start, end) of the kernel object's code in the linked binary, from the linker's map: the
    whole .text of kernel.o, since the parallel loop's body is a function without a symbol."""
    ranges = [(int(m.group(1), 16), int(m.group(1), 16) + int(m.group(2), 16)) for m in
              re.finditer(r"^ \.text\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)\s+\S*kernel\.o$", link_map.read_text(), re.M)]
    if not ranges:
        raise QCompilerError(f"{link_map}: the linker's map shows no code of kernel.o")
    return ranges


def block_counts(log: Path, ranges: list[tuple[int, int]]) -> tuple[collections.Counter, dict[int, int]]:
    """How often each translation block inside `ranges` ran, and its last instruction's address,
    from qemu's `-d in_asm,exec` log. Blocks read `IN: symbol` then one `0xADDR: ...` line per
    instruction; each run reads `Trace 0: 0x... [flags/PC/...] symbol`. qemu's own extents are
    used because it also ends blocks where its buffers fill, not only at branches."""
    counts: collections.Counter = collections.Counter()
    ends: dict[int, int] = {}
    current: list[int] | None = None
    with open(log, encoding="utf-8", errors="replace") as lines:
        for line in lines:
            if line.startswith("Trace"):
                counts[int(line.split("[", 1)[1].split("/", 2)[1], 16)] += 1
            elif line.startswith("IN:"):
                current = []
            elif current is not None and line.startswith("0x"):
                current.append(int(line.split(":", 1)[0], 16))
            elif current:
                ends[current[0]], current = current[-1], None
    if current:
        ends[current[0]] = current[-1]
    inside = collections.Counter({pc: n for pc, n in counts.items() if any(a <= pc < b for a, b in ranges)})
    if not inside or any(pc not in ends for pc in inside):
        raise QCompilerError("qemu's log does not show the kernel's blocks: nothing to estimate")
    return inside, ends


def translation_blocks(elf: Path, ranges: list[tuple[int, int]], ends: dict[int, int], starts) -> dict[int, list[str]]:
    """Each block's instructions, from its start to its end, as llvm-mca reads them: the
    disassembly with addresses in operands replaced by a label."""
    text = _run([f"{CROSS_PREFIX}objdump", "-d", "--no-show-raw-insn", f"--start-address={ranges[0][0]}",
                 f"--stop-address={ranges[-1][1]}", str(elf)], elf.parent, "disassembling the kernel")
    code: dict[int, str] = {}
    for line in text.splitlines():
        match = re.match(r"^\s*([0-9a-f]+):\s+(\S+)\s*([^/]*)", line)
        if match:
            operands = re.sub(r"\b[0-9a-f]+ <[^>]*>", "LABEL", match.group(3).strip())
            code[int(match.group(1), 16)] = f"{match.group(2)} {operands}".strip()
    return {start: [code[pc] for pc in range(start, ends[start] + 4, 4)] for start in starts}


def mca_cycles(blocks: list[list[str]], cpu: str) -> list[float]:
    """llvm-mca's cycles per run of each block on `cpu`, in steady state (the block repeated
    MCA_ITERATIONS times, as in a loop), all blocks in one call as separate code regions."""
    source = []
    for i, block in enumerate(blocks):
        label = f".Lblock{i}"
        source += [f"# LLVM-MCA-BEGIN b{i}", f"{label}:", *(line.replace("LABEL", label) for line in block),
                   "# LLVM-MCA-END"]
    with tempfile.NamedTemporaryFile("w", suffix=".s") as handle:
        handle.write("\n".join(source) + "\n")
        handle.flush()
        out = _run(["llvm-mca", "-mtriple=aarch64", f"-mcpu={cpu}", "-mattr=+dotprod,+i8mm",
                    f"-iterations={MCA_ITERATIONS}", "-instruction-info=0", "-resource-pressure=0", handle.name],
                   Path(handle.name).parent, f"llvm-mca -mcpu={cpu}")
    cycles = [int(c) / MCA_ITERATIONS for c in re.findall(r"Total Cycles:\s+(\d+)", out)]
    if len(cycles) != len(blocks):
        raise QCompilerError(f"llvm-mca gave {len(cycles)} results for {len(blocks)} blocks")
    return cycles


def _run(command: list[str], cwd: Path, what: str) -> str:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise QCompilerError(f"{what} failed ({command[0]}, exit {done.returncode}): {last}")
    return done.stdout
