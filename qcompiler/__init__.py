"""qcompiler: a quantizing model compiler (ONNX in; QDQ ONNX, integer libraries and a report out).

    import qcompiler
    model = qcompiler.load("model.onnx")                  # validated, shape-inferred
    model = qcompiler.optimize(model)                     # canonicalize + fold-batchnorm
    qcompiler.save(model, "model.opt.onnx")               # atomic
    result = qcompiler.quantize(model, "calib.npz", "w8a8")
    qcompiler.save(result.qdq, "model.qdq.onnx")

Only `qcompiler.ir` imports onnx-graphsurgeon and nothing here imports torch, jax or tvm.
`Model`, `load` and `save` are imported on first use, so that `qcompiler.runtime` (which runs
compiled libraries, also on an ARM board or under qemu) needs neither onnx nor the compiler.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from qcompiler.errors import QCompilerError

if TYPE_CHECKING:
    from qcompiler.ir import Model

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


def __getattr__(name: str):
    if name in ("Model", "load", "save"):
        from qcompiler import ir

        return getattr(ir, name)
    raise AttributeError(f"module 'qcompiler' has no attribute {name!r}")


__all__ = ["Model", "QCompilerError", "__version__", "load", "optimize", "quantize", "save"]
