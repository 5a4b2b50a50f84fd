"""sum-to-add: ONNX Sum of two tensors becomes Add.

Older exporters (the ONNX zoo's ResNet-50 and ShuffleNet, opset 9) write residual connections
as Sum. Add is the form the quantizer's placement rules (residual add with requantized sides)
and the backend's integer rewrite know; TVM imports Sum as stack + sum over a 5-D tensor,
which also stops its NHWC layout conversion. Both ops broadcast the same way (opset >= 8).
"""

from __future__ import annotations

from typing import Any

from qcompiler.ir import Model, Node
from qcompiler.registry import register
from qcompiler.rewrite import Reject, RewriteRule, RuleSetPass


class SumOfTwo(RewriteRule):
    name, op_type = "sum-of-two", "Sum"

    def match(self, model: Model, node: Node) -> dict[str, Any] | Reject:
        if len(node.inputs) != 2:
            return Reject(f"Sum of {len(node.inputs)} inputs stays a Sum (only two map to one Add)")
        return {}

    def rewrite(self, model: Model, node: Node, captures: dict[str, Any]) -> None:
        model.replace_nodes([node], "Add", list(node.inputs), list(node.outputs))


@register("sum-to-add")
class SumToAdd(RuleSetPass):
    """Rewrite two-input Sum nodes as Add."""

    rules = (SumOfTwo(),)
