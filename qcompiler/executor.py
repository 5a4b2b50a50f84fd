"""onnxruntime, the reference executor: sessions over a Model, extra outputs."""

from __future__ import annotations

from collections.abc import Sequence

import onnx
import onnxruntime as ort

from qcompiler.ir import Model


def session(model: Model | onnx.ModelProto, *, extra_outputs: Sequence[str] = (), optimize: bool = True,
            threads: int = 0) -> ort.InferenceSession:
    """A CPU session; `extra_outputs` exposes intermediate tensors by name; `optimize=False`
    keeps the graph exactly as written (so BatchNormalization is not folded by onnxruntime)."""
    if isinstance(model, Model):
        if extra_outputs:
            model = model.copy()
            tensors = model.tensors()
            present = {t.name for t in model.graph.outputs}
            model.graph.outputs.extend(tensors[n] for n in extra_outputs if n not in present)
        model = model.to_onnx()
    options = ort.SessionOptions()
    options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    disabled = ["QDQSelectorActionTransformer"] if optimize and _has_weight_only_matmul(model) else []
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"],
                                disabled_optimizers=disabled)


def _has_weight_only_matmul(model: onnx.ModelProto) -> bool:
    """A MatMul/Gemm reading a dequantized weight and a float activation. onnxruntime 1.31's QDQ
    fusion runs those by quantizing the activation to 8 bits on the fly (0.5-0.8% error per layer
    where the weight is per column; measured), which the QDQ model does not say: evaluate them as written."""
    dequantized = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return any(n.op_type in ("MatMul", "Gemm") and len(n.input) > 1 and n.input[1] in dequantized
               and n.input[0] not in dequantized for n in model.graph.node)
