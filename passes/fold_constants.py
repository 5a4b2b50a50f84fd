"""fold-constants: evaluate every node whose inputs are all constant, once, at compile time.

QuantizeLinear and DequantizeLinear are never folded: they carry the quantization, and folding
DQ(int8 weight) back into a float weight would silently undo it.
"""

from __future__ import annotations

import logging

import onnxruntime

from qcompiler.ir import Model, Node
from qcompiler.pass_infra import Pass, PassResult
from qcompiler.registry import register

log = logging.getLogger(__name__)

NEVER_FOLD = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"})


@register("fold-constants")
class FoldConstants(Pass):
    """Constant folding (onnx-graphsurgeon's folder, run by onnxruntime), Q/DQ excluded."""

    def call(self, model: Model) -> PassResult:
        before = model.fingerprint()
        onnxruntime.set_default_logger_severity(3)  # the folder's sessions warn about every model
        model.graph.fold_constants(fold_shapes=True, should_exclude_node=_excluded, error_ok=True)
        model.finalize()
        return PassResult(model, model.fingerprint() != before)


def _excluded(node: Node) -> bool:
    return node.op in NEVER_FOLD
