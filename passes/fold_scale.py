"""fold-scale: fold per-channel scale and shift layers into the Conv, ConvTranspose or Gemm before them.

Caffe's Scale layer (Conv -> Mul -> Add by [C, 1, 1] constants, as in the ONNX zoo's Inception),
a BatchNorm that fold-batchnorm had to write as Mul + Add, PaddlePaddle's `scale` op and
tflite's scalar rescales all put an affine map y = s * z + t per output channel after a layer.
Like a BatchNorm it folds into the layer (W' = s W per output channel, b' = s b + t), so the
quantizer sees one layer instead of a layer and two float elementwise ops. Each rule takes one
Mul, Add, Sub or Div with a constant operand that varies along the channel axis only (or is a
scalar); chains fold one op per sweep, in any order. Folding is done in float64, then cast back.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from qcompiler.ir import Model, Node
from qcompiler.passes.fold_batchnorm import FoldIntoConv, FoldIntoConvTranspose, FoldIntoGemm
from qcompiler.registry import register
from qcompiler.rewrite import Reject, RewriteRule, RuleSetPass

#: How each layer's weight and bias take a per-output-channel affine map (the BN folding rules).
LAYER_FOLDS = {"Conv": FoldIntoConv(), "ConvTranspose": FoldIntoConvTranspose(), "Gemm": FoldIntoGemm()}


class FoldAffineOp(RewriteRule):
    """layer -> OP(constant) becomes the layer with rescaled weight and bias (OP: Mul, Add, Sub, Div)."""

    def __init__(self, op_type: str) -> None:
        self.op_type, self.name = op_type, f"fold-{op_type.lower()}"

    def match(self, model: Model, node: Node) -> dict[str, Any] | Reject:
        sides = [(i, model.producer(t), model.const_value(t)) for i, t in enumerate(node.inputs)]
        layer_side = [i for i, producer, _ in sides if producer is not None and producer.op in LAYER_FOLDS]
        const_side = [i for i, _, value in sides if value is not None]
        if len(node.inputs) != 2 or not layer_side or not const_side or layer_side[0] == const_side[0]:
            return Reject("not a layer output combined with a constant")
        layer, constant = sides[layer_side[0]][1], np.asarray(sides[const_side[0]][2])
        if not model.has_single_use(node.inputs[layer_side[0]]):
            return Reject(f"{layer.name}'s output has other readers than this {node.op}")
        if constant.dtype.kind != "f":
            return Reject("the constant is not floating point")
        weight = model.const_value(model.input_or_none(layer, 1))
        bias_tensor = model.input_or_none(layer, 2)
        if weight is None or (bias_tensor is not None and model.const_value(bias_tensor) is None):
            return Reject(f"{layer.name}'s weight or bias is not a constant")
        rule = LAYER_FOLDS[layer.op]
        channels = rule.out_channels(layer, weight)
        values = per_channel(constant, channels, len(node.outputs[0].shape or ()) or 2)
        if isinstance(values, Reject):
            return values
        affine = _affine(node.op, values, constant_first=const_side[0] == 0)
        if isinstance(affine, Reject):
            return affine
        return {"layer": layer, "s": affine[0], "t": affine[1], "weight": weight,
                "bias": model.const_value(bias_tensor)}

    def rewrite(self, model: Model, node: Node, captures: dict[str, Any]) -> None:
        LAYER_FOLDS[captures["layer"].op].rewrite(model, node, captures)


def per_channel(constant: np.ndarray, channels: int, rank: int) -> np.ndarray | Reject:
    """The constant as one float64 value per output channel (axis 1 of a rank-`rank` output),
    if it broadcasts along that axis only, else why not.

    >>> per_channel(np.array([[[2.0]], [[3.0]]]), 2, 4).tolist()
    [2.0, 3.0]
    >>> per_channel(np.float32(0.5), 3, 4).tolist()
    [0.5, 0.5, 0.5]
    """
    if constant.ndim > rank:
        return Reject(f"a constant of rank {constant.ndim} would broadcast the rank-{rank} output")
    shape = (1,) * (rank - constant.ndim) + constant.shape
    if any(d != 1 for axis, d in enumerate(shape) if axis != 1) or shape[1] not in (1, channels):
        return Reject(f"the constant's shape {list(constant.shape)} is not per channel")
    return np.broadcast_to(constant.astype(np.float64).reshape(-1), (channels,)).copy()


def _affine(op: str, c: np.ndarray, constant_first: bool) -> tuple[np.ndarray, np.ndarray] | Reject:
    """(s, t) with OP(z, c) = s * z + t per channel."""
    ones, zeros = np.ones_like(c), np.zeros_like(c)
    if op == "Mul":
        return c, zeros
    if op == "Add":
        return ones, c
    if op == "Sub":
        return (-ones, c) if constant_first else (ones, -c)
    if constant_first:
        return Reject("c / z is not affine in z")
    if np.any(c == 0):
        return Reject("division by a zero constant")
    return 1.0 / c, zeros


@register("fold-scale")
class FoldScale(RuleSetPass):
    """Fold per-channel Mul/Add/Sub/Div by constants (scale layers) into Conv/ConvTranspose/Gemm."""

    rules = tuple(FoldAffineOp(op) for op in ("Mul", "Add", "Sub", "Div"))
