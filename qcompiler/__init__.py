"""qcompiler: a quantizing model compiler (ONNX in; QDQ ONNX, integer libraries and a report out).

    import qcompiler
    model = qcompiler.load("model.onnx")                  # validated, shape-inferred
    model = qcompiler.optimize(model)                     # canonicalize + fold-batchnorm
    qcompiler.save(model, "model.opt.onnx")               # atomic

Only `qcompiler.ir` imports onnx-graphsurgeon and nothing here imports torch, jax or tvm.
"""

from __future__ import annotations

from qcompiler.errors import QCompilerError
from qcompiler.ir import Model, load, save

__version__ = "0.1.0"


def optimize(model: Model, passes=None, context=None) -> Model:
    """Run graph passes (names or Pass instances; the default pipeline if None) over `model`."""
    from qcompiler.driver import build_pipeline

    return build_pipeline(passes, context)(model).model


__all__ = ["Model", "QCompilerError", "__version__", "load", "optimize", "save"]
