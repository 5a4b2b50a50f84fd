"""How closely a compiled library follows its QDQ model (the reference, run in onnxruntime).

Differences are counted in LSBs of each output's quantization scale (the scale of the
DequantizeLinear that produces it): the contract is at most 1 LSB on every element.

The reference is the QDQ model as written (onnxruntime with graph optimizations off: each op
in float between its DequantizeLinear and QuantizeLinear, which is what the ONNX standard
says the model computes). onnxruntime's optimized run replaces those with its QLinear integer
kernels, and on CPUs where MLAS takes its AVX2 u8s8 path (AMD Zen included, onnxruntime
issue 16105) their 16-bit pair sums saturate: on one 3x3 convolution of normal inputs we
measured 44 LSB against the model as written, while our library was exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from qcompiler.executor import session


@dataclass(frozen=True)
class Fidelity:
    output: str
    max_lsb: float           # largest |library - reference| / scale over all elements
    equal_share: float       # share of elements that are exactly equal (to within 1e-3 LSB)
    samples: int
    quantized: bool = True   # False: a float output, compared in units of its largest magnitude

    def line(self) -> str:
        difference = f"{self.max_lsb:.2f} LSB" if self.quantized else f"{self.max_lsb:.2g} of its largest magnitude"
        return f"{self.output}: max {difference}, {100 * self.equal_share:.1f}% of elements exact ({self.samples} samples)"


def output_scales(qdq: onnx.ModelProto) -> dict[str, float | None]:
    """Each graph output's per-tensor scale when a DequantizeLinear produces it, else None."""
    inits = {i.name: i for i in qdq.graph.initializer}
    producers = {o: n for n in qdq.graph.node for o in n.output}
    scales = {}
    for value in qdq.graph.output:
        node = producers.get(value.name)
        scale = None
        if node is not None and node.op_type == "DequantizeLinear" and node.input[1] in inits:
            array = numpy_helper.to_array(inits[node.input[1]])
            scale = float(array.reshape(-1)[0]) if array.size == 1 else None
        scales[value.name] = scale
    return scales


def run_reference(sess, feeds: dict[str, np.ndarray]) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
    """An onnxruntime session's outputs, and the feeds they are for: a model that fixes its
    batch (squeezenet's 1x3x224x224) is run a batch at a time, on whole batches only."""
    samples = next(iter(feeds.values())).shape[0]
    fixed = [i.shape[0] for i in sess.get_inputs() if i.shape and isinstance(i.shape[0], int)]
    size = min(fixed) if fixed else samples
    if size >= samples:
        return sess.run(None, feeds), feeds
    feeds = {name: array[:samples - samples % size] for name, array in feeds.items()}
    parts = [sess.run(None, {name: array[start:start + size] for name, array in feeds.items()})
             for start in range(0, samples - samples % size, size)]
    return [np.concatenate(outputs) for outputs in zip(*parts)], feeds


def compare(qdq: onnx.ModelProto, library, feeds: dict[str, np.ndarray]) -> list[Fidelity]:
    """Run both on the same inputs; one Fidelity per output (a float output is compared in
    units of its largest magnitude instead of LSBs)."""
    return compare_outputs(qdq, library.run(feeds), feeds)


def compare_outputs(qdq: onnx.ModelProto, actual: dict[str, np.ndarray], feeds: dict[str, np.ndarray]) -> list[Fidelity]:
    """`compare` for outputs the library already computed on `feeds` (a run under qemu is slow)."""
    reference, feeds = run_reference(session(qdq, optimize=False), feeds)
    samples = next(iter(feeds.values())).shape[0]
    results = []
    for (name, scale), expected in zip(output_scales(qdq).items(), reference):
        unit = scale or max(float(np.abs(expected).max(initial=0.0)), 1e-30)
        diff = np.abs(actual[name].astype(np.float64) - expected) / unit
        results.append(Fidelity(name, float(diff.max(initial=0.0)), float(np.mean(diff < 1e-3)), samples,
                                quantized=scale is not None))
    return results


def reference_spread(qdq: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> float:
    """How far onnxruntime's optimized (QLinear kernels) and unoptimized (float DQ/op/Q, the
    reference) runs of the same QDQ model are apart, in LSBs of the first output: how much
    onnxruntime's own integer kernels deviate from the model (saturation on AVX2 u8s8 paths,
    near-ties amplified layer by layer)."""
    scale = list(output_scales(qdq).values())[0]
    optimized = run_reference(session(qdq), feeds)[0][0]
    plain = run_reference(session(qdq, optimize=False), feeds)[0][0]
    unit = scale or max(float(np.abs(optimized).max(initial=0.0)), 1e-30)
    return float(np.abs(optimized.astype(np.float64) - plain).max(initial=0.0)) / unit
