"""The requantization record: what the integer rewrite decided for one lowered layer, handed to
kernel selection as data instead of being read back from the ops it emitted.

The rewrite names the vars of each layer it records: `{tag}_acc`, the int32 accumulator of a
conv or matmul (or the int64 sum of a residual add's two terms), and `{tag}_out`, the
requantized output. Relax's passes in between (ConvertLayout, FoldConstant) keep name hints,
so kernel selection finds both by name and takes every number from the record.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qcompiler.backends.tvm.schedules.requantize import Requantize


@dataclass(frozen=True, eq=False)
class LayerRequantization:
    tag: str
    requantize: Requantize            # zero point, clamps, output dtype, the shift, ties to even
    multipliers: tuple                # per term: int64, per output channel (a layer) or one (an add's side)
    correction: np.ndarray | None = None   # int32 per output channel, added to a conv/matmul accumulator
    zero_points: tuple = ()           # of each term's input (a residual add)
    #: (top, left, bottom, right) the rewrite padded a conv's input by, with its zero point, in
    #: a pad named `{tag}_pad` (the kernel pads itself instead); None: the conv pads with 0.
    input_padding: tuple | None = None
    pad_value: int = 0

    @property
    def acc_name(self) -> str:
        return f"{self.tag}_acc"

    @property
    def out_name(self) -> str:
        return f"{self.tag}_out"

    @property
    def pad_name(self) -> str:
        return f"{self.tag}_pad"


def var_name(var) -> str:
    """A Relax var's name hint."""
    return var.vid.name_hint if hasattr(var, "vid") else str(var)
