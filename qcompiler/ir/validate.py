"""Checks the ONNX checker does not make: quantization parameters that cannot be right, and a
model that onnxruntime cannot run (a Conv whose weight does not fit its input passes the
checker and shape inference; onnxruntime refuses it, naming the node)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from qcompiler import supervise
from qcompiler.errors import InvalidModelError, UnsupportedModelError
from qcompiler.ir.model import MAX_WRITTEN_IR_VERSION

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


def check_quant_params(proto: onnx.ModelProto, path: Path) -> None:
    """Every constant QuantizeLinear/DequantizeLinear scale finite and > 0 (a zero scale divides
    by zero; a negative one flips the sign; NaN/Inf poison every value after it)."""
    inits = {i.name: i for i in proto.graph.initializer}
    constants = {o: n.attribute[0].t for n in proto.graph.node if n.op_type == "Constant" and n.attribute
                 and n.attribute[0].name == "value" for o in n.output}
    for node in proto.graph.node:
        if node.op_type not in QDQ_OPS or len(node.input) < 2:
            continue
        tensor = inits.get(node.input[1]) or constants.get(node.input[1])
        if tensor is None:
            continue   # computed at run time: nothing to check here
        scale = numpy_helper.to_array(tensor).astype(np.float64)
        bad = scale[~(np.isfinite(scale) & (scale > 0))]
        if bad.size:
            raise InvalidModelError(f"{path}: {node.op_type} node {node.name or node.output[0]!r} has scale "
                                    f"{float(bad.flat[0])} in {node.input[1]!r}; scales must be finite and positive "
                                    "(re-quantize the model)")


def check_runs(proto: onnx.ModelProto, path: Path) -> None:
    """One inference on zeros in onnxruntime, where every input is float and only the batch is
    symbolic (elsewhere zeros could be wrong inputs, not a wrong model)."""
    import onnxruntime as ort

    feeds = _zero_feeds(proto)
    if feeds is None:
        return
    options = ort.SessionOptions()
    options.log_severity_level = 4
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    model = _serialized_for_onnxruntime(proto) if serialized_size(proto) < onnx.checker.MAXIMUM_PROTOBUF else str(path)
    try:
        with supervise.stage(f"onnxruntime (checking {path})"):
            ort.InferenceSession(model, options, providers=["CPUExecutionProvider"]).run(None, feeds)
    except ort.capi.onnxruntime_pybind11_state.NotImplemented as exc:
        raise UnsupportedModelError(f"{path}: onnxruntime does not implement part of it: {_one_line(exc)}") from None
    except Exception as exc:  # onnxruntime's errors (InvalidArgument, Fail, ...) share no base but Exception
        if supervise.interrupted():
            raise KeyboardInterrupt from None
        raise InvalidModelError(f"{path}: onnxruntime cannot run the model on zeros, so it is not valid: "
                                f"{_one_line(exc)}") from None


def _serialized_for_onnxruntime(proto: onnx.ModelProto) -> bytes:
    ir_version = proto.ir_version
    proto.ir_version = min(ir_version, MAX_WRITTEN_IR_VERSION)   # onnxruntime 1.31 reads IR <= 13; onnx writes newer
    try:
        return proto.SerializeToString()
    finally:
        proto.ir_version = ir_version


def serialized_size(proto: onnx.ModelProto) -> int:
    """Bytes the model takes serialized; protobuf itself raises above 2 GiB, which means 'large'."""
    try:
        return proto.ByteSize()
    except (ValueError, OverflowError):
        return onnx.checker.MAXIMUM_PROTOBUF


def _zero_feeds(proto: onnx.ModelProto) -> dict | None:
    initializers = {i.name for i in proto.graph.initializer}
    feeds = {}
    for value in proto.graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        if not value.type.HasField("tensor_type") or tensor.elem_type not in (onnx.TensorProto.FLOAT,
                                                                               onnx.TensorProto.FLOAT16):
            return None
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
        if any(d is None or d <= 0 for d in dims[1:]):
            return None
        shape = [1 if (dims[0] is None or dims[0] <= 0) else dims[0], *dims[1:]] if dims else []
        feeds[value.name] = np.zeros(shape, onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type))
    return feeds


def _one_line(exc: Exception) -> str:
    """The whole message, on one line (onnxruntime's start with a bracketed status code)."""
    return " ".join(str(exc).split())
