"""fold-batchnorm: fold inference-mode BatchNormalization into the layer before it.

At inference BN is the per-channel affine map  BN(z) = s * z + t  with
    s = gamma / sqrt(var + eps),   t = beta - s * mean.
Applied after a layer z = W x + b, it folds into that layer: W' = s * W (per output channel),
b' = s * b + t. Three rules fold into Conv, ConvTranspose and Gemm; a BN that follows anything
else (or a layer whose output has other readers) becomes Mul(s) + Add(t), which quantization
and the backends handle like any elementwise op. Folding is done in float64, then cast back.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from qcompiler.errors import PassError
from qcompiler.ir import Model, Node
from qcompiler.registry import register
from qcompiler.rewrite import Reject, RewriteRule, RuleSetPass


def bn_affine(model: Model, bn: Node) -> tuple[np.ndarray, np.ndarray] | Reject:
    """(s, t) in float64 for an inference-mode BN with constant parameters, or why not."""
    if bn.attrs.get("training_mode", 0):
        return Reject("training_mode=1: batch statistics, not an affine map")
    if any(t.outputs or model.is_graph_output(t) for t in bn.outputs[1:]):
        return Reject("its running-statistics outputs are used (training graph)")
    if bn.attrs.get("spatial", 1) != 1:
        return Reject("spatial=0 (per-activation statistics) is not folded")
    values = [model.const_value(t) for t in bn.inputs[1:5]]
    names = ("scale", "B", "mean", "var")
    missing = [n for n, v in zip(names, values) if v is None]
    if missing:
        return Reject(f"parameters {missing} are not constants")
    gamma, beta, mean, var = (np.asarray(v, np.float64).reshape(-1) for v in values)
    if not gamma.size == beta.size == mean.size == var.size:
        return Reject("parameter sizes differ")
    s = gamma / np.sqrt(var + float(bn.attrs.get("epsilon", 1e-5)))
    return s, beta - s * mean


def _producer_feeding_only(model: Model, bn: Node, op: str) -> Node | Reject:
    layer = model.producer(bn.inputs[0])
    if layer is None or layer.op != op:
        return Reject(f"the input is not produced by {op}")
    if not model.has_single_use(bn.inputs[0]):
        return Reject(f"{op} {layer.name}'s output has other readers than this BN")
    return layer


class _FoldIntoLayer(RewriteRule):
    """Shared match/rewrite; subclasses say how the weight and bias scale per output channel."""

    op_type = "BatchNormalization"
    layer_op = ""
    bias_index = 2

    def match(self, model: Model, node: Node) -> dict[str, Any] | Reject:
        layer = _producer_feeding_only(model, node, self.layer_op)
        if isinstance(layer, Reject):
            return layer
        affine = bn_affine(model, node)
        if isinstance(affine, Reject):
            return affine
        weight = model.const_value(model.input_or_none(layer, 1))
        bias_t = model.input_or_none(layer, self.bias_index)
        bias = model.const_value(bias_t)
        if weight is None:
            return Reject(f"{layer.name}'s weight is not a constant")
        if bias_t is not None and bias is None:
            return Reject(f"{layer.name}'s bias is not a constant")
        channels = self.out_channels(layer, weight)
        if channels != affine[0].size:
            return Reject(f"{layer.name} has {channels} output channels, the BN {affine[0].size}")
        return {"layer": layer, "s": affine[0], "t": affine[1], "weight": weight, "bias": bias}

    def rewrite(self, model: Model, node: Node, captures: dict[str, Any]) -> None:
        layer, s, t, weight = captures["layer"], captures["s"], captures["t"], captures["weight"]
        new_weight, new_bias, attrs = self.fold(layer, weight, captures["bias"], s, t)
        model.set_const_input(layer, 1, new_weight.astype(weight.dtype))
        model.set_const_input(layer, self.bias_index, new_bias.astype(weight.dtype), name=f"{layer.name}_bias")
        inputs = list(layer.inputs)
        model.replace_nodes([layer, node], layer.op, inputs, [node.outputs[0]], attrs, name=layer.name)

    def out_channels(self, layer: Node, weight: np.ndarray) -> int:
        raise NotImplementedError

    def fold(self, layer: Node, weight: np.ndarray, bias: np.ndarray | None, s: np.ndarray, t: np.ndarray):
        raise NotImplementedError


class FoldIntoConv(_FoldIntoLayer):
    """Conv weight [M, C/g, k...]: scale row m by s[m] (groups and depthwise alike)."""

    name, layer_op = "conv-bn", "Conv"

    def out_channels(self, layer: Node, weight: np.ndarray) -> int:
        return weight.shape[0]

    def fold(self, layer, weight, bias, s, t):
        w = weight.astype(np.float64) * s.reshape((-1,) + (1,) * (weight.ndim - 1))
        b = (np.zeros_like(s) if bias is None else bias.astype(np.float64)) * s + t
        return w, b, dict(layer.attrs)


class FoldIntoConvTranspose(_FoldIntoLayer):
    """ConvTranspose weight [C, M/g, k...]: output channel g*(M/g)+j is [group g, :, j]."""

    name, layer_op = "convtranspose-bn", "ConvTranspose"

    def out_channels(self, layer: Node, weight: np.ndarray) -> int:
        return weight.shape[1] * int(layer.attrs.get("group", 1))

    def fold(self, layer, weight, bias, s, t):
        groups = int(layer.attrs.get("group", 1))
        c_in, m_per_group, kernel = weight.shape[0], weight.shape[1], weight.shape[2:]
        grouped = weight.astype(np.float64).reshape((groups, c_in // groups, m_per_group) + kernel)
        w = (grouped * s.reshape((groups, 1, m_per_group) + (1,) * len(kernel))).reshape(weight.shape)
        b = (np.zeros_like(s) if bias is None else bias.astype(np.float64)) * s + t
        return w, b, dict(layer.attrs)


class FoldIntoGemm(_FoldIntoLayer):
    """Y = alpha A B + beta C: scale B's output columns (rows if transB), C' = s beta C + t."""

    name, layer_op = "gemm-bn", "Gemm"

    def out_channels(self, layer: Node, weight: np.ndarray) -> int:
        return weight.shape[0] if layer.attrs.get("transB", 0) else weight.shape[1]

    def fold(self, layer, weight, bias, s, t):
        trans_b = layer.attrs.get("transB", 0)
        w = weight.astype(np.float64) * (s[:, None] if trans_b else s[None, :])
        beta = float(layer.attrs.get("beta", 1.0))
        c = np.zeros_like(s) if bias is None else beta * bias.astype(np.float64)
        attrs = dict(layer.attrs, beta=1.0)
        return w, c * s + t, attrs


class BatchNormToMulAdd(RewriteRule):
    """A BN that cannot fold: Y = X * s + t with s, t shaped [C, 1, ...] to broadcast on axis 1."""

    name, op_type = "bn-to-mul-add", "BatchNormalization"

    def match(self, model: Model, node: Node) -> dict[str, Any] | Reject:
        affine = bn_affine(model, node)
        if isinstance(affine, Reject):
            return affine
        x = node.inputs[0]
        if x.shape is None or len(x.shape) < 2:
            return Reject(f"the rank of {x.name} is unknown")
        return {"s": affine[0], "t": affine[1], "rank": len(x.shape)}

    def rewrite(self, model: Model, node: Node, captures: dict[str, Any]) -> None:
        x, out = node.inputs[0], node.outputs[0]
        dtype = model.const_value(node.inputs[1]).dtype
        shape = (-1,) + (1,) * (captures["rank"] - 2)
        scale = model.constant(f"{node.name}_scale", captures["s"].reshape(shape).astype(dtype))
        shift = model.constant(f"{node.name}_shift", captures["t"].reshape(shape).astype(dtype))
        scaled = model.variable(f"{node.name}_scaled", dtype=x.dtype, shape=x.shape)
        model.replace_nodes([node], "Add", [scaled, shift], [out], name=f"{node.name}_add")
        model.add_node("Mul", [x, scale], [scaled], name=f"{node.name}_mul")


@register("fold-batchnorm")
class FoldBatchNorm(RuleSetPass):
    """Fold BatchNormalization into Conv/ConvTranspose/Gemm; otherwise rewrite it as Mul+Add."""

    rules = (FoldIntoConv(), FoldIntoConvTranspose(), FoldIntoGemm(), BatchNormToMulAdd())

    def ensures(self, model: Model) -> None:
        left = [n.name for n in model.graph.nodes if n.op == "BatchNormalization"
                and not isinstance(BatchNormToMulAdd().match(model, n), Reject)]
        if left:
            raise PassError(f"Pass developer: fold-batchnorm left foldable BatchNormalization nodes {left}")
