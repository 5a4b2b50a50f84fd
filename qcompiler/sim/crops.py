"""Random spatial crops of a convolutional block's cached inputs and targets, exact where compared.

A block's output near a crop's edge reads inputs outside the crop (its receptive field: see
qcompiler.sim.crop_reach), so the crop of the inputs carries a halo, and the loss compares only
the outputs whose receptive field lies inside the crop (or whose edge is the image's own edge,
where the zero padding is the network's too). Crops start at multiples of every stride in the
block, so the cropped block computes exactly the full block's outputs at those positions: the
loss over a crop is the full loss restricted to the positions it compares. The crop length is
congruent to the input size modulo the strides, so crops may end at the image's far edge.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from qcompiler.blocks import AUTO_CROP
from qcompiler.sim.crop_reach import Reach


@dataclasses.dataclass(frozen=True)
class AxisCrop:
    """One spatial axis: the input's `size`, the crop's `length` (== size: not cropped), and
    `align`, the step between crop starts (the least common multiple of the block's strides)."""

    size: int
    length: int
    align: int

    def starts(self, rng: np.random.Generator, count: int) -> np.ndarray:
        return rng.integers(0, (self.size - self.length) // self.align + 1, count) * self.align

    def valid(self, reach: Reach, starts: np.ndarray, out_length: int) -> np.ndarray:
        """[samples, out_length]: the cropped outputs that equal the full block's."""
        start = starts[:, None]
        position = reach.stride * (start // reach.stride + np.arange(out_length))  # full output index * stride
        low = (start == 0) | (position + reach.lo >= start)
        high = (start + self.length == self.size) | (position + reach.hi < start + self.length)
        return low & high


def axis_crop(size: int, outputs: list[Reach], strides: list[int], crop: int) -> AxisCrop:
    """The crop of one axis that gives `crop` comparable positions of the coarsest output."""
    align = math.lcm(*strides)
    stride = max(r.stride for r in outputs)
    need = stride * (crop - 1) + max(r.hi for r in outputs) - min(r.lo for r in outputs) + 1 + align - 1
    length = need + (size - need) % align
    return AxisCrop(size, min(length, size), align)


@dataclasses.dataclass(frozen=True)
class Crops:
    """Crops of one block: per axis (height, width), and the Reach of each output it compares."""

    axes: tuple[AxisCrop, AxisCrop]
    outputs: dict[str, tuple[Reach, Reach]]

    @property
    def area(self) -> float:
        """The crop's share of the input area (what a training step costs, roughly, against the full size)."""
        return math.prod(a.length / a.size for a in self.axes)

    def describe(self) -> str:
        return "x".join(str(a.length) for a in self.axes) + " of " + "x".join(str(a.size) for a in self.axes)

    def take(self, rng: np.random.Generator, inputs: dict, targets: dict, fisher: dict | None):
        """A crop per sample: (inputs, targets, fisher, masks), the last three over the outputs in
        `targets`' order, masks [samples, height, width] of 1 where an output is compared."""
        count = len(next(iter(inputs.values())))
        starts = [axis.starts(rng, count) for axis in self.axes]
        windows = [[slice(s, s + axis.length) for s in st] for axis, st in zip(self.axes, starts)]
        cropped = {k: _stack(v, windows) for k, v in inputs.items()}
        out_targets, out_fisher, masks = [], [] if fisher is not None else None, []
        for name, target in targets.items():
            reach = self.outputs[name]
            lengths = [full - (a.size - a.length) // r.stride for full, a, r in zip(target.shape[2:], self.axes, reach)]
            out_windows = [[slice(s // r.stride, s // r.stride + n) for s in st]
                           for st, r, n in zip(starts, reach, lengths)]
            out_targets.append(_stack(target, out_windows))
            if fisher is not None:
                out_fisher.append(_stack(fisher[name], out_windows))
            rows, cols = (a.valid(r, st, n) for a, r, st, n in zip(self.axes, reach, starts, lengths))
            masks.append((rows[:, :, None] & cols[:, None, :]).astype(np.float32))
        return cropped, out_targets, out_fisher, masks


def _stack(values: np.ndarray, windows: list[list[slice]]) -> np.ndarray:
    return np.stack([values[i, :, rows, cols] for i, (rows, cols) in enumerate(zip(*windows))])


def plan_crops(reach: dict[str, tuple[Reach, Reach]] | None, outputs: list[str], size: tuple[int, int],
               crop: int | str | None) -> Crops | None:
    """The crops of a block whose inputs are `size` (height, width); None when not cropped: crop
    None, a block that is not spatially local, a crop no smaller than the input, or (crop "auto")
    one that would not halve the input area."""
    if crop is None or reach is None:
        return None
    side = AUTO_CROP if crop == "auto" else int(crop)
    axes = tuple(axis_crop(size[a], [reach[o][a] for o in outputs], [r[a].stride for r in reach.values()], side)
                 for a in range(2))
    plan = Crops(axes, {o: reach[o] for o in outputs})
    if plan.area >= (0.5 if crop == "auto" else 1.0):
        return None
    return plan
