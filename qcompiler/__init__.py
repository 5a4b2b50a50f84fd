"""qcompiler: a quantizing model compiler (ONNX in; QDQ ONNX, integer libraries and a report out).

    import qcompiler
    model = qcompiler.load("model.onnx")                  # validated, shape-inferred
    model = qcompiler.optimize(model)                     # canonicalize + fold-batchnorm
    qcompiler.save(model, "model.opt.onnx")               # atomic
    result = qcompiler.quantize(model, "calib.npz", "w8a8")
    qcompiler.save(result.qdq, "model.qdq.onnx")

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


def quantize(model: Model, calib, preset: str = "w8a8", observer: str | None = None, overrides=(), **options):
    """Post-training quantization (see docs/quantization.md); returns a `driver.Quantized` whose
    `.qdq` is the QDQ model. `calib`: a .npz/.npy path, image folder, dict of arrays or iterable."""
    from qcompiler.driver import quantize as run
    from qcompiler.quant.presets import load_config

    return run(model, calib, load_config(None, preset, observer, list(overrides)), **options)


__all__ = ["Model", "QCompilerError", "__version__", "load", "optimize", "quantize", "save"]
