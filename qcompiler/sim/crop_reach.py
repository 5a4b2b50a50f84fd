"""How far a block's outputs reach into its inputs, per spatial axis, for cropping (see
qcompiler.sim.crops).

A block is *spatially local* when every op maps positions to positions with a fixed window:
convolutions and windowed pools with explicit pads, elementwise ops, channel concatenation.
Then output position i of a tensor depends only on the input positions
[stride * i + lo, stride * i + hi] (input coordinates, before padding): its `Reach`. Blocks
with anything else (Gemm, MatMul, global pools, Reshape, Flatten, Resize, auto_pad SAME, whose
pads change with the input size) have none and are not cropped.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

#: Ops that map each position to itself (inputs beyond the first may be constants that broadcast).
POINTWISE = frozenset({
    "Relu", "Clip", "LeakyRelu", "PRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu", "Selu", "Softplus",
    "Gelu", "Swish", "Mish", "Erf", "Exp", "Log", "Sqrt", "Abs", "Neg", "Identity", "Cast", "BatchNormalization",
    "Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean", "Pow", "Where", "Equal", "Less", "Greater"})
WINDOWED = frozenset({"Conv", "MaxPool", "AveragePool"})


@dataclasses.dataclass(frozen=True)
class Reach:
    """Position i of a tensor depends on input positions [stride * i + lo, stride * i + hi]."""

    stride: int
    lo: int
    hi: int

    def through(self, kernel: int, stride: int, dilation: int, pad_begin: int) -> Reach:
        """The reach of a window op's output that reads a tensor with this reach."""
        return Reach(self.stride * stride, self.lo - self.stride * pad_begin,
                     self.hi + self.stride * ((kernel - 1) * dilation - pad_begin))


def join(reaches: Sequence[Reach]) -> Reach | None:
    """The reach of an elementwise op over tensors with these reaches (None: different grids)."""
    if len({r.stride for r in reaches}) != 1:
        return None
    return Reach(reaches[0].stride, min(r.lo for r in reaches), max(r.hi for r in reaches))


def _window(step, constants: Mapping[str, np.ndarray]) -> list[tuple[int, int, int, int]] | None:
    """(kernel, stride, dilation, pad_begin) per spatial axis of a 2-D Conv or pool; None if not local."""
    attrs = step.attrs
    auto = attrs.get("auto_pad", "NOTSET")
    if (auto.decode() if isinstance(auto, bytes) else auto) not in ("NOTSET", "VALID"):
        return None
    if step.op == "Conv":
        weight = constants.get(step.inputs[1])
        kernel = None if weight is None else list(weight.shape[2:])
    else:
        kernel = list(attrs.get("kernel_shape", []))
    if kernel is None or len(kernel) != 2:
        return None
    strides, dilations = list(attrs.get("strides", [1, 1])), list(attrs.get("dilations", [1, 1]))
    pads = [0, 0] if auto in ("VALID", b"VALID") else list(attrs.get("pads", [0, 0, 0, 0]))[:2]
    return [(kernel[a], strides[a], dilations[a], pads[a]) for a in range(2)]


def _constant_broadcasts(name: str, constants: Mapping[str, np.ndarray]) -> bool:
    """A constant operand of a pointwise op that is the same at every position (size 1 spatially)."""
    shape = np.shape(constants[name])
    return len(shape) < 2 or all(d == 1 for d in shape[-2:])


def _step_reach(step, env: dict, constants: Mapping[str, np.ndarray]) -> tuple[Reach, Reach] | None:
    data = [name for name in step.inputs if name and name not in constants]
    if any(name not in env for name in data) or not data:
        return None
    if step.op in WINDOWED:
        window = _window(step, constants)
        return None if window is None else tuple(env[data[0]][a].through(*window[a]) for a in range(2))
    if step.op == "Concat" and step.attrs.get("axis") not in (1, -3):
        return None
    if step.op not in POINTWISE and step.op != "Concat":
        return None
    if not all(_constant_broadcasts(n, constants) for n in step.inputs if n and n in constants):
        return None
    axes = [join([env[name][a] for name in data]) for a in range(2)]
    return None if None in axes else tuple(axes)


def block_reach(steps: Sequence, inputs: Sequence[str], outputs: Sequence[str],
                constants: Mapping[str, np.ndarray]) -> dict[str, tuple[Reach, Reach]] | None:
    """Each tensor's (height, width) Reach over the block's inputs (which must share one grid),
    or None when the block is not spatially local. `steps`: the interpreter's steps of the block."""
    env = {name: (Reach(1, 0, 0), Reach(1, 0, 0)) for name in inputs}
    for step in steps:
        reach = _step_reach(step, env, constants)
        if reach is None:
            return None
        env.update({name: reach for name in step.outputs})
    return env if all(name in env for name in outputs) else None
