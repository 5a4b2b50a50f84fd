"""normalize-clip: every bounding activation in one form, so later passes match one pattern.

The forms exporters produce for ReLU, ReLU6 and friends -- Clip with constant bounds,
Max(x, c), Min(x, c), and chains of them such as Min(Relu(x), 6) -- become:
    Relu(x)            when the bounds are [0, +inf)
    Clip(x, lo, hi)    otherwise; bounds as constant inputs (opset >= 11) or attributes (< 11)
Chains merge because clip(clip(x, a, b), c, d) = clip(x, max(a, c), min(b, d)) whenever the
two intervals overlap (when they do not, the result is a constant and the chain is left alone).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from qcompiler.ir import Model, Node, Variable
from qcompiler.registry import register
from qcompiler.rewrite import Reject, RewriteRule, RuleSetPass

INF = math.inf


def _scalar(model: Model, tensor) -> float | None:
    value = model.const_value(tensor)
    if value is None or value.size != 1:
        return None
    return float(value.reshape(()))


def bounds_of(model: Model, node: Node) -> tuple[Any, float, float] | Reject:
    """(data input, lower, upper) of a bounding node, or why it is not one."""
    if node.op == "Relu":
        return node.inputs[0], 0.0, INF
    if node.op == "Clip":
        if model.opset < 11:
            return node.inputs[0], float(node.attrs.get("min", -INF)), float(node.attrs.get("max", INF))
        lo_t, hi_t = model.input_or_none(node, 1), model.input_or_none(node, 2)
        lo = -INF if lo_t is None else _scalar(model, lo_t)
        hi = INF if hi_t is None else _scalar(model, hi_t)
        if lo is None or hi is None:
            return Reject("the bounds are not scalar constants")
        return node.inputs[0], lo, hi
    if node.op in ("Max", "Min") and len(node.inputs) == 2:
        for data, other in (node.inputs, node.inputs[::-1]):
            c = _scalar(model, other)
            if c is not None and model.const_value(data) is None:
                if data.shape is None or (other.shape is not None and len(other.shape) > len(data.shape)):
                    return Reject(f"cannot tell that {other.name} does not broadcast {data.name} to a larger shape")
                return (data, c, INF) if node.op == "Max" else (data, -INF, c)
        return Reject("neither operand is a scalar constant")
    return Reject(f"{node.op} is not a bounding op")


class MergeBounds(RewriteRule):
    """Anchored on one of Relu, Clip, Max, Min (one rule instance per op type)."""

    def __init__(self, op_type: str) -> None:
        self.op_type = op_type
        self.name = f"normalize-{op_type.lower()}"

    def match(self, model: Model, node: Node) -> dict[str, Any] | Reject:
        outer = bounds_of(model, node)
        if isinstance(outer, Reject):
            return outer
        data, lo, hi = outer
        inner_node = model.producer(data)
        merged = False
        if inner_node is not None and inner_node.op in ("Relu", "Clip", "Max", "Min") and model.has_single_use(data):
            inner = bounds_of(model, inner_node)
            if not isinstance(inner, Reject) and max(lo, inner[1]) <= min(hi, inner[2]):
                data, lo, hi, merged = inner[0], max(lo, inner[1]), min(hi, inner[2]), True
        if not merged:
            if node.op == "Relu":
                return Reject("already canonical")
            if node.op == "Clip" and (lo, hi) != (0.0, INF):
                return Reject("already canonical")
        return {"data": data, "lo": lo, "hi": hi, "inner": inner_node if merged else None}

    def rewrite(self, model: Model, node: Node, captures: dict[str, Any]) -> None:
        old = [node] + ([captures["inner"]] if captures["inner"] is not None else [])
        data, lo, hi = captures["data"], captures["lo"], captures["hi"]
        if (lo, hi) == (0.0, INF):
            model.replace_nodes(old, "Relu", [data], [node.outputs[0]], name=node.name)
            return
        dtype = np.dtype(data.dtype) if data.dtype is not None else np.dtype(np.float32)
        if model.opset < 11:
            attrs = {k: v for k, v in (("min", lo), ("max", hi)) if math.isfinite(v)}
            model.replace_nodes(old, "Clip", [data], [node.outputs[0]], attrs, name=node.name)
            return
        lo_t = model.constant(f"{node.name}_min", np.array(lo, dtype)) if math.isfinite(lo) else Variable.empty()
        hi_t = model.constant(f"{node.name}_max", np.array(hi, dtype)) if math.isfinite(hi) else None
        inputs = [data, lo_t] + ([hi_t] if hi_t is not None else [])
        model.replace_nodes(old, "Clip", inputs, [node.outputs[0]], name=node.name)


@register("normalize-clip")
class NormalizeClip(RuleSetPass):
    """ReLU/ReLU6/clamp forms (Clip, Max, Min, chains) into Relu or a single Clip."""

    rules = tuple(MergeBounds(op) for op in ("Relu", "Clip", "Max", "Min"))
