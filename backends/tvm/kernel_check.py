"""Each kernel of a C-driver library against the same kernel compiled for this host, fed the same
inputs: the per-layer check of a Hexagon library under qemu (which traces every kernel's output,
qemu_hexagon.QemuHexagonLibrary.trace).

A kernel's inputs are the traced outputs of the kernels before it (or the model's inputs, or
constants), so a difference points at the one kernel that computes differently on the DSP, not at
an accumulation of earlier ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm


@dataclass
class KernelDifference:
    step: int
    kernel: str
    max_abs: float        # in units of the output's integer type (LSBs), or absolute for float outputs
    mismatched: int       # elements that differ
    elements: int


def host_twins(scheduled_for_target):
    """`scheduled_for_target()` (a function that schedules the module) run with the
    dot-product instructions emulated by loops: the same kernels, by name, runnable here."""
    from qcompiler.backends.tvm.hexagon_codegen import kernel_functions, planned_main
    from qcompiler.backends.tvm.schedules.int8_conv import emulated_dot_products

    with emulated_dot_products():
        return kernel_functions(planned_main(scheduled_for_target()))


def compare_kernels(kernels, plan, feeds: dict[str, np.ndarray], traced: list[bytes]) -> list[KernelDifference]:
    """One KernelDifference per kernel call (`kernels`: host_twins of the plan's kernels;
    `traced`: each call's output bytes on the DSP, in order)."""
    host = tvm.target.Target("llvm")
    values: dict[str, np.ndarray] = {t.name: np.asarray(feeds[name]) for t, name in zip(plan.inputs, feeds)}
    values.update({name: array for name, array in plan.constants})
    shapes = {t.name: t for t in plan.tensors.values()}
    built: dict = {}
    results, traced = [], iter(traced)
    for step, ((kernel, args), written) in enumerate(zip(plan.calls, plan.outputs_of)):
        inputs, outputs = args[:len(args) - written], args[len(args) - written:]
        if kernel not in built:
            built[kernel] = tvm.tirx.build(kernels[kernel], target=host)
        fed = [tvm.runtime.tensor(np.ascontiguousarray(values[a], dtype=shapes[a].dtype).reshape(shapes[a].shape))
               for a in inputs]
        computed = [tvm.runtime.tensor(np.zeros(shapes[a].shape, dtype=shapes[a].dtype)) for a in outputs]
        built[kernel][kernel](*fed, *computed)
        worst, mismatched, elements = 0.0, 0, 0
        for name, reference in zip(outputs, computed):
            expected = np.frombuffer(next(traced), dtype=shapes[name].dtype).reshape(shapes[name].shape)
            diff = np.abs(reference.numpy().astype(np.float64) - expected.astype(np.float64))
            worst, mismatched, elements = max(worst, float(diff.max(initial=0))), mismatched + int((diff > 0).sum()), \
                elements + diff.size
            values[name] = expected   # the next kernels read what the DSP computed
        results.append(KernelDifference(step, kernel, worst, mismatched, elements))
    return results
