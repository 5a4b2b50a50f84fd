"""qcompiler: a quantizing model compiler (ONNX in; QDQ ONNX, integer libraries and a report out).

    import qcompiler
    built = qcompiler.compile("model.onnx", "calib.npz", target="native", output_dir="out")
    outputs = built.load().run(x)                          # the integer library, here

    run = qcompiler.quantize("model.onnx", "calib.npz", "w4a8")   # -> QuantizeRun
    print(qcompiler.evaluate(run, "held_out.npz"))                 # accuracy, agreement, KL, SQNR
    qcompiler.save(run.qdq, "model.qdq.onnx")                      # atomic

The driver (qcompiler.driver, qcompiler.compiler) does the work; docs/architecture.md maps the
layers. `Model`, `load`, `save` and the driver are imported on first use, so that
`qcompiler.runtime` (which runs compiled libraries, also on an ARM board or under qemu) needs
neither onnx nor the compiler.
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


def quantize(model, calib, preset: str = "w8a8", observer: str | None = None, overrides=(), **options):
    """Post-training quantization (docs/quantization.md) of a Model or .onnx path; returns a
    `driver.QuantizeRun` whose `.qdq` is the QDQ model. `calib`: a .npz/.npy path, image
    folder, dict of arrays or iterable. `options`: those of qcompiler.driver.quantize
    (reconstruct=ReconstructConfig(...) for BRECQ, input_shapes, calib_count, ...)."""
    from qcompiler.driver import quantize as run
    from qcompiler.quant.presets import load_config

    return run(model, calib, load_config(None, preset, observer, list(overrides)), **options)


def compile(model, calib=None, target: str = "native", *, output_dir=None, preset: str = "w8a8",
            observer: str | None = None, overrides=(), **options):
    """Quantize (a float model, with `calib`) and build the integer library for `target`; with
    `output_dir`, write model.so, model.json, model.qdq.onnx and report.html there and check the
    library against the QDQ model. Returns a `compiler.CompileRun` (`.load()` runs the library)."""
    from qcompiler.compiler import compile as run
    from qcompiler.quant.presets import load_config

    config = load_config(None, preset, observer, list(overrides))
    return run(model, calib, target, output_dir=output_dir, config=config, **options)


def evaluate(run, data, **options):
    """A QuantizeRun's QDQ model against its float model on held-out data (.npz with 'labels'
    for accuracy): an `evaluate.Evaluation`."""
    from qcompiler.driver import evaluate as run_evaluation

    return run_evaluation(run, data, **options)


def __getattr__(name: str):
    if name in ("Model", "load", "save"):
        from qcompiler import ir

        return getattr(ir, name)
    raise AttributeError(f"module 'qcompiler' has no attribute {name!r}")


__all__ = ["Model", "QCompilerError", "__version__", "compile", "evaluate", "load", "optimize", "quantize", "save"]
