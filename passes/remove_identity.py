"""remove-identity: drop Identity nodes and inference-mode Dropout."""

from __future__ import annotations

from typing import Any

from qcompiler.ir import Model, Node
from qcompiler.registry import register
from qcompiler.rewrite import Reject, RewriteRule, RuleSetPass


def _check_passthrough(model: Model, node: Node) -> Reject | None:
    """A pass-through can go unless it is all that links a graph input or constant to an output."""
    out = node.outputs[0]
    if model.is_graph_output(out) and not model.can_take_output_name(node.inputs[0]):
        return Reject(f"{out.name} is a graph output fed by graph input or constant "
                      f"{node.inputs[0].name}; the node keeps the model's interface")
    return None


class DropIdentity(RewriteRule):
    name, op_type = "identity", "Identity"

    def match(self, model: Model, node: Node) -> dict[str, Any] | Reject:
        return _check_passthrough(model, node) or {}

    def rewrite(self, model: Model, node: Node, captures: dict[str, Any]) -> None:
        model.bypass(node)


class DropInferenceDropout(RewriteRule):
    """Dropout is the identity at inference unless training_mode is set (opset >= 12)."""

    name, op_type = "dropout", "Dropout"

    def match(self, model: Model, node: Node) -> dict[str, Any] | Reject:
        if len(node.outputs) > 1 and (node.outputs[1].outputs or model.is_graph_output(node.outputs[1])):
            return Reject(f"its mask output {node.outputs[1].name} is used")
        training = model.input_or_none(node, 2)
        if training is not None:
            value = model.const_value(training)
            if value is None:
                return Reject(f"training_mode {training.name} is not a constant")
            if bool(value):
                return Reject("training_mode is true")
        return _check_passthrough(model, node) or {}

    def rewrite(self, model: Model, node: Node, captures: dict[str, Any]) -> None:
        if len(node.outputs) > 1:
            del node.outputs[1]
        model.bypass(node)


@register("remove-identity")
class RemoveIdentity(RuleSetPass):
    """Remove Identity and inference-mode Dropout nodes, keeping input and output names."""

    rules = (DropIdentity(), DropInferenceDropout())
