"""fold-pad: a zero Pad in front of a Conv becomes the Conv's own padding.

TF's "SAME" padding is exported (tf2onnx, tflite2onnx, and computed from Shape by fold-shapes)
as a Pad node before a Conv with pads=0, often asymmetric (0 before, 1 after for stride 2). Left
alone, the Pad runs in float between a DequantizeLinear and a QuantizeLinear, and the Conv reads
a separately quantized tensor; as the Conv's `pads` attribute it is part of the integer layer.
A constant-mode Pad of zeros over the spatial axes only, read by Conv nodes only, folds.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from qcompiler.ir import Model, Node
from qcompiler.registry import register
from qcompiler.rewrite import Reject, RewriteRule, RuleSetPass


def pad_amounts(model: Model, node: Node) -> np.ndarray | Reject:
    """The Pad's begin/end amounts over all axes (attribute before opset 11, input after)."""
    if (node.attrs.get("mode", "constant") or "constant") not in ("constant", b"constant"):
        return Reject(f"mode {node.attrs['mode']!r} is not constant padding")
    if model.opset < 11:
        pads, value = node.attrs.get("pads"), node.attrs.get("value", 0.0)
    else:
        pads = model.const_value(model.input_or_none(node, 1))
        value_t = model.input_or_none(node, 2)
        value = 0.0 if value_t is None else model.const_value(value_t)
        if len(node.inputs) > 3 and node.inputs[3].name:
            return Reject("explicit axes input")
    if pads is None or value is None:
        return Reject("pads or value are not constants")
    if np.any(np.asarray(value) != 0):
        return Reject("pads with a non-zero value")
    return np.asarray(pads, np.int64).reshape(-1)


class PadIntoConv(RewriteRule):
    """Pad(x, spatial zeros) -> Conv(pads=p) becomes Conv(x, pads=p + those zeros)."""

    name, op_type = "pad-into-conv", "Pad"

    def match(self, model: Model, node: Node) -> dict[str, Any] | Reject:
        pads = pad_amounts(model, node)
        if isinstance(pads, Reject):
            return pads
        rank = len(pads) // 2
        if rank < 3 or np.any(pads < 0) or np.any(pads[[0, 1, rank, rank + 1]] != 0):
            return Reject("pads the batch or channel axes, or crops")
        readers = model.consumers(node.outputs[0])
        if model.is_graph_output(node.outputs[0]) or not readers or any(
                r.op != "Conv" or r.inputs[0] is not node.outputs[0] or
                r.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET") for r in readers):
            return Reject("read by something other than a Conv's data input with explicit pads")
        return {"spatial": np.concatenate([pads[2:rank], pads[rank + 2:]]), "readers": readers}

    def rewrite(self, model: Model, node: Node, captures: dict[str, Any]) -> None:
        spatial = captures["spatial"]
        for conv in captures["readers"]:
            own = np.asarray(conv.attrs.get("pads", [0] * len(spatial)), np.int64)
            conv.attrs["pads"] = [int(p) for p in own + spatial]
            conv.inputs[0] = node.inputs[0]
        model.remove_node(node)


@register("fold-pad")
class FoldPad(RuleSetPass):
    """Fold zero Pads over the spatial axes into the Conv that reads them."""

    rules = (PadIntoConv(),)
