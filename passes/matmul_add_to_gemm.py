"""matmul-add-to-gemm: MatMul(A, B) + C becomes Gemm(A, B, C) where Gemm can express it.

Gemm is the form the quantizer and the backends know as a fully connected layer (weight B,
bias C). Legal only when A and B are 2-D and C broadcasts to the (M, N) result without
changing its shape; otherwise the rule says which condition failed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from qcompiler.ir import Model, Node
from qcompiler.registry import register
from qcompiler.rewrite import Reject, RewriteRule, RuleSetPass

FLOAT_TYPES = (np.float16, np.float32, np.float64)


def _rank(tensor) -> int | None:
    return None if tensor.shape is None else len(tensor.shape)


class MatMulAdd(RewriteRule):
    name, op_type = "matmul-add", "MatMul"

    def match(self, model: Model, node: Node) -> dict[str, Any] | Reject:
        a, b = node.inputs
        product = node.outputs[0]
        if not model.has_single_use(product):
            return Reject(f"{product.name} has other readers than one Add")
        add = product.outputs[0]
        if add.op != "Add":
            return Reject(f"{product.name} feeds {add.op}, not Add")
        if _rank(a) != 2 or _rank(b) != 2:
            return Reject(f"Gemm needs 2-D operands; A has rank {_rank(a)}, B has rank {_rank(b)}")
        if a.dtype is None or np.dtype(a.dtype).type not in FLOAT_TYPES:
            return Reject(f"A's dtype {a.dtype} is not a float type")
        bias = add.inputs[1] if add.inputs[0] is product else add.inputs[0]
        bias_shape = bias.shape
        n = b.shape[1]
        if bias_shape is None or len(bias_shape) > 2:
            return Reject(f"bias {bias.name} has unknown or >2-D shape {bias_shape}")
        if list(bias_shape)[-1:] not in ([], [1], [n]) or (len(bias_shape) == 2 and bias_shape[0] not in (1, a.shape[0])):
            return Reject(f"bias shape {bias_shape} does not broadcast to the ({a.shape[0]}, {n}) product")
        return {"add": add, "bias": bias}

    def rewrite(self, model: Model, node: Node, captures: dict[str, Any]) -> None:
        add = captures["add"]
        a, b = node.inputs
        model.replace_nodes([node, add], "Gemm", [a, b, captures["bias"]], [add.outputs[0]])


@register("matmul-add-to-gemm")
class MatMulAddToGemm(RuleSetPass):
    """Fuse a 2-D MatMul and its bias Add into one Gemm."""

    rules = (MatMulAdd(),)
