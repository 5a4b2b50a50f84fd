"""Shape arithmetic folded with graphsurgeon (which only qcompiler.ir imports): the engine of the
fold-shapes pass. Each round infers shapes (with data propagation), replaces every Shape/Size
of a fully known tensor by its value, and lets graphsurgeon's folder evaluate what follows."""

from __future__ import annotations

from collections.abc import Collection

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime

MAX_ROUNDS = 4  # a Shape becomes known only after the shapes before it fold (Reshape of a Reshape)


def fold_shape_arithmetic(proto: onnx.ModelProto, never_fold: Collection[str] = ()) -> onnx.ModelProto:
    """Shapes inferred, each Shape with a static input replaced by its value, constants folded
    (ops in `never_fold`, such as QuantizeLinear, are left as they are)."""
    onnxruntime.set_default_logger_severity(3)
    for _ in range(MAX_ROUNDS):
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
    """Shape(x) (with start/end) or Size(x) of a fully known x becomes a constant; True if it did."""
    shape = node.inputs[0].shape
    if shape is None or not all(isinstance(d, int) for d in shape) or not node.outputs[0].outputs:
        return False
    dims = np.array(shape, np.int64)
    value = np.array(dims.prod(), np.int64) if node.op == "Size" else dims[node.attrs.get("start", 0):node.attrs.get("end")]
    out = node.outputs[0]
    constant = gs.Constant(f"{out.name}__value", value)
    for consumer in list(out.outputs):
        for i, tensor in enumerate(consumer.inputs):
            if tensor is out:
                consumer.inputs[i] = constant
    return True
