"""onnxruntime, the reference executor (DESIGN.md §4): sessions over a Model, extra outputs."""

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
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
