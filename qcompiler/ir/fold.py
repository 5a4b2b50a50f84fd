"""Shape arithmetic folded with graphsurgeon (which only qcompiler.ir imports): the engine of the
fold-shapes pass. Each round infers shapes (with data propagation), replaces every Shape/Size
of a fully known tensor by its value, and lets graphsurgeon's folder evaluate what follows."""

from __future__ import annotations

from collections.abc import Collection

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime


def fold_shape_arithmetic(proto: onnx.ModelProto, never_fold: Collection[str] = ()) -> onnx.ModelProto:
    """Shapes inferred, each Shape with a static input replaced by its value, constants folded
    (ops in `never_fold`, such as QuantizeLinear, are left as they are). A Shape becomes known
    only after the shapes before it fold (a Reshape of a Reshape; torch's `chunk`, whose Div
    shape inference does not propagate): rounds go on while one replaces a Shape, at most one
    round per Shape node (a TorchScript ShuffleNetV2 at opset 11 takes 10)."""
    onnxruntime.set_default_logger_severity(3)
    for _ in range(1 + sum(n.op_type in ("Shape", "Size") for n in proto.graph.node)):
        graph = gs.import_onnx(onnx.shape_inference.infer_shapes(proto, data_prop=True))
        replaced = sum(_replace_static_shape(node) for node in graph.nodes if node.op in ("Shape", "Size"))
        graph.cleanup().toposort()
        graph.fold_constants(fold_shapes=True, error_ok=True, should_exclude_node=lambda n: n.op in never_fold)
        graph.cleanup().toposort()
        proto = gs.export_onnx(graph, do_type_check=False)
        if not replaced:
            break
    return onnx.shape_inference.infer_shapes(proto, data_prop=True)


def _replace_static_shape(node: gs.Node) -> bool:
    """Shape(x) (with start/end) or Size(x) of a fully known x becomes a Constant node; True if it
    did. (In place, so that a Shape that is a graph output folds too: left to graphsurgeon's own
    shape folding, it lost start and end.)"""
    shape = node.inputs[0].shape
    if shape is None or not all(isinstance(d, int) for d in shape):
        return False
    dims = np.array(shape, np.int64)
    value = np.array(dims.prod(), np.int64) if node.op == "Size" else dims[node.attrs.get("start", 0):node.attrs.get("end")]
    node.op, node.attrs = "Constant", {"value": gs.Constant(f"{node.outputs[0].name}__value", value)}
    node.inputs.clear()
    return True
