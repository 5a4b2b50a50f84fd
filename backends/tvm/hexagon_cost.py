"""A static cost report of a Hexagon library's kernels, from the disassembly of model_hvx.o
(llvm-objdump of Debian's llvm-14): qemu has no timing model of the DSP, so this is the only
look at speed here, and it is not a measurement.

Per kernel: VLIW packets, instructions, HVX instructions, `vrmpy` instructions, and, for the
kernels on vrmpy, the packets of the innermost loop that holds them per vrmpy. One vrmpy per
packet is taken as the peak (each is 128 u8 x s8 multiply-adds; a packet issues in one cycle
per hardware thread): the "% of vrmpy peak" column is 100 / (packets per vrmpy), an upper
bound on what the loop can reach, stalls and memory not counted.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

OBJDUMP = "llvm-objdump-14"
_FUNCTION = re.compile(r"^[0-9a-f]+ <(.+)_compute_>:$")
_ADDRESS = re.compile(r"^\s*([0-9a-f]+):\s")
_HVX = re.compile(r"\bv\d+(:\d+)?(\.\w+)?\s*[+|&^-]?=|vmem\(|\bq\d\s*=")
_LOOP = re.compile(r"\bloop([01])\(0x([0-9a-f]+),")
_JUMP_BACK = re.compile(r"\bjump(:[tn]+)?\s+0x([0-9a-f]+)")


@dataclass
class KernelCost:
    kernel: str
    packets: int
    instructions: int
    hvx: int
    vrmpy: int
    loop_packets: int = 0       # packets of the innermost loop holding vrmpy
    loop_vrmpy: int = 0

    @property
    def packets_per_vrmpy(self) -> float | None:
        return self.loop_packets / self.loop_vrmpy if self.loop_vrmpy else None


def disassemble(obj: Path, arch: str = "v68") -> str:
    done = subprocess.run([OBJDUMP, "-d", f"--mattr=+hvx{arch},+hvx-length128b", str(obj)],
                          capture_output=True, text=True, check=True)
    return done.stdout


def kernel_costs(disassembly: str) -> list[KernelCost]:
    """One KernelCost per kernel (its `<name>_compute_` function), in address order."""
    costs, name, lines = [], None, []
    for line in disassembly.splitlines() + [""]:
        start = _FUNCTION.match(line)
        if (start or not line.strip()) and name is not None:
            costs.append(_cost(name, lines))
            name, lines = None, []
        if start:
            name = start.group(1)
        elif name is not None and _ADDRESS.match(line):
            lines.append(line)
    return costs


def _cost(name: str, lines: list[str]) -> KernelCost:
    packets = [i for i, line in enumerate(lines) if "}" in line.split("\t")[-1]]   # a packet's last instruction
    cost = KernelCost(name, len(packets), len(lines), sum(bool(_HVX.search(l)) for l in lines),
                      sum("vrmpy(" in l for l in lines))
    loops = _loop_ranges(lines)
    holding = [(a, b) for a, b in loops if any("vrmpy(" in l for l in lines[a:b + 1])]
    if holding:
        a, b = min(holding, key=lambda r: r[1] - r[0])
        cost.loop_packets = sum(a <= p <= b for p in packets)
        cost.loop_vrmpy = sum("vrmpy(" in l for l in lines[a:b + 1])
    elif cost.vrmpy:   # fully unrolled: the whole function is the loop
        cost.loop_packets, cost.loop_vrmpy = cost.packets, cost.vrmpy
    return cost


def _loop_ranges(lines: list[str]) -> list[tuple[int, int]]:
    """(first, last) line of every loop: hardware loops (loopN(target) .. :endloopN) and
    backward jumps."""
    index = {int(_ADDRESS.match(l).group(1), 16): i for i, l in enumerate(lines)}
    ranges = []
    for i, line in enumerate(lines):
        loop = _LOOP.search(line)
        if loop and int(loop.group(2), 16) in index:
            first = index[int(loop.group(2), 16)]
            last = next((j for j in range(first, len(lines)) if f":endloop{loop.group(1)}" in lines[j]), None)
            if last is not None:
                ranges.append((first, last))
        jump = _JUMP_BACK.search(line)
        if jump and int(jump.group(2), 16) in index and index[int(jump.group(2), 16)] <= i:
            ranges.append((index[int(jump.group(2), 16)], i))
    return ranges


def cost_report(obj: Path, arch: str = "v68") -> str:
    """hvx_cost.md: the table, or why there is none."""
    if shutil.which(OBJDUMP) is None:
        return f"# HVX cost\n\nNo report: {OBJDUMP} is missing (scripts/setup_hexagon.sh installs llvm-14).\n"
    costs = kernel_costs(disassemble(obj, arch))
    rows = ["| kernel | packets | instructions | HVX | vrmpy | inner-loop packets per vrmpy | % of vrmpy peak |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    for c in costs:
        ratio = c.packets_per_vrmpy
        rows.append(f"| {c.kernel[:72]} | {c.packets} | {c.instructions} | {c.hvx} | {c.vrmpy} | "
                    + (f"{ratio:.2f} | {100 / ratio:.0f}% |" if ratio else "- | - |"))
    total = sum(c.packets for c in costs)
    return ("# HVX cost (static, from the disassembly; qemu has no timing, so nothing here is measured)\n\n"
            f"{len(costs)} kernels, {total} packets of code, {sum(c.vrmpy for c in costs)} vrmpy. Peak: one "
            "vrmpy (128 multiply-adds) per packet; the percentage bounds what the innermost loop can reach.\n\n"
            + "\n".join(rows) + "\n")
