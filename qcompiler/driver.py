"""The driver: the one place that wires passes (and, later, backends) into pipelines."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import numpy as np

from qcompiler.blocks import ReconstructConfig
from qcompiler.data import Dataset, ImagePreprocess, load_data
from qcompiler.errors import UnsupportedModelError, UsageError
from qcompiler.ir import INT4_DTYPES, Model
from qcompiler.pass_infra import Pass, PassContext, PassManager
from qcompiler.quant.presets import QuantConfig
from qcompiler.quant.ties import narrow_concat_inputs

log = logging.getLogger(__name__)


def build_pipeline(passes: Sequence[str | Pass] | None = None, context: PassContext | None = None) -> PassManager:
    """A PassManager over pass names (looked up in the registry) or instances; default pipeline if None."""
    from qcompiler import passes as builtin  # registers the built-in passes

    chosen = builtin.DEFAULT_PIPELINE if passes is None else passes
    instances = [p if isinstance(p, Pass) else builtin.get_pass(p)() for p in chosen]
    return PassManager(instances, context)


@dataclasses.dataclass
class Quantized:
    """What `quantize` produces: the float model it started from (canonicalized, BN folded),
    the same model annotated with calibrated QuantSpecs, and the QDQ model."""

    float_model: Model
    annotated: Model
    qdq: Model
    dequantized: dict[str, str]  # quantized tensor -> its dequantized name in `qdq`
    config: QuantConfig
    calibration: Dataset
    reconstruction: list = dataclasses.field(default_factory=list)  # BlockReports, when reconstructed
    bias_shifts: dict = dataclasses.field(default_factory=dict)  # layer -> largest bias change (correct-bias)
    untied: dict = dataclasses.field(default_factory=dict)  # Concat -> why its scales were untied


def quantize(model: Model, calib, config: QuantConfig | None = None, *, calib_count: int | None = None,
             preprocess: ImagePreprocess | None = None, batch_size: int | None = None, progress: bool = True,
             context: PassContext | None = None, reconstruct: ReconstructConfig | None = None,
             input_shapes: dict[str, tuple[int, ...]] | None = None) -> Quantized:
    """Post-training quantization: canonicalize, fold BN, annotate, calibrate, then either
    reconstruct blocks (BRECQ, when `reconstruct` is given) or correct biases (unless the config
    turns it off), insert QDQ.

    `calib`: a .npz/.npy path or image folder, a dict of arrays, or an iterable of feed dicts.
    `input_shapes`: input name -> shape to fix (first dimension -1: keep a dynamic batch); inputs
    with dynamic dimensions beyond the batch otherwise take the calibration data's shape.
    """
    from qcompiler.passes import AnnotateQuant, CalibrateRanges, CorrectBias, FoldShapes, InsertQDQ, ReconstructBlocks

    config = config or QuantConfig()
    qdq_nodes = [n.name for n in model.graph.nodes if n.op in ("QuantizeLinear", "DequantizeLinear")]
    if qdq_nodes:
        raise UnsupportedModelError(
            f"{model.path or 'model'}: already quantized ({len(qdq_nodes)} QuantizeLinear/DequantizeLinear nodes, "
            f"e.g. {qdq_nodes[0]}); quantize the float model instead")
    if input_shapes or dynamic_inputs(model):
        raw = load_data(calib, model, preprocess=preprocess, limit=calib_count)
        shapes = resolve_input_shapes(model, input_shapes, raw.arrays)
        model = PassManager([FoldShapes(shapes)], context)(model).model
        calib = raw.arrays  # validated against the model as given; validated again after folding
    float_model = build_pipeline(None, context)(model).model
    data = load_data(calib, float_model, preprocess=preprocess, limit=calib_count)
    reconstructor = ReconstructBlocks(data, reconstruct, progress) if reconstruct is not None else None
    corrector = CorrectBias(data, batch_size, progress) if reconstruct is None and config.bias_correction else None
    calibrate = [AnnotateQuant(config), CalibrateRanges(data, batch_size, progress)]
    annotated = PassManager(calibrate, context)(float_model.copy()).model
    untied = narrow_concat_inputs(annotated)
    if untied:  # calibrate again with those Concats untied (qcompiler.quant.ties)
        for concat, reason in untied.items():
            log.warning("Concat %s: %s; its inputs keep their own scales and it runs in float", concat, reason)
        config = dataclasses.replace(config, untied_concats=frozenset(untied))
        calibrate = [AnnotateQuant(config), CalibrateRanges(data, batch_size, progress)]
        annotated = PassManager(calibrate, context)(float_model.copy()).model
    steps = [step for step in (reconstructor, corrector) if step is not None]
    annotated = PassManager(steps, context)(annotated).model
    insert = InsertQDQ()
    qdq = PassManager([insert], context)(annotated.copy()).model
    return Quantized(float_model, annotated, qdq, insert.dequantized, config, data,
                     reconstructor.reports if reconstructor else [], corrector.shifts if corrector else {}, untied)


def dynamic_inputs(model: Model) -> list[str]:
    """Inputs with a dynamic dimension beyond the first (the batch): their shape must be fixed to compile."""
    return [t.name for t in model.graph.inputs
            if any(not isinstance(d, int) or d <= 0 for d in list(t.shape or ())[1:])]


def resolve_input_shapes(model: Model, given: dict | None, arrays: dict | None = None) -> dict[str, tuple]:
    """The shape to fix each input at: as given, else (for dynamic inputs) the data's sample shape
    behind a batch kept dynamic (-1) where the model's batch is."""
    given = dict(given or {})
    unknown = sorted(set(given) - {t.name for t in model.graph.inputs})
    if unknown:
        raise UsageError(f"--input-shape names {unknown}, which the model does not have as inputs "
                         f"(its inputs: {[t.name for t in model.graph.inputs]})")
    for name in dynamic_inputs(model):
        if name not in given and arrays is not None and name in arrays:
            first = (list(model.tensor(name).shape or [None]) or [None])[0]
            given[name] = (first if isinstance(first, int) and first > 0 else -1, *arrays[name].shape[1:])
    return given


def constant_bytes(model: Model) -> int:
    """Bytes of a model's constants as stored in ONNX (INT4/UINT4 two values per byte)."""
    total = 0
    for tensor in model.tensors().values():
        values = getattr(tensor, "values", None)
        if values is not None:
            values = np.asarray(values)
            total += (values.size + 1) // 2 if values.dtype in INT4_DTYPES else values.nbytes
    return total


def compile_qdq(qdq: Model, target: str = "x86", batch: int = 1, input_shapes: dict | None = None):
    """Build the QDQ model into an integer library for a target (in memory; `write_library` saves it).

    Shape arithmetic left in the model is folded first, at `input_shapes` where given (write
    the library with the model `fix_shapes` returns)."""
    from qcompiler.backends.tvm.build import build

    qdq = fix_shapes(qdq, input_shapes)
    return build(qdq.to_onnx(), target, batch, name=str(qdq.path or "model"))


def fix_shapes(model: Model, input_shapes: dict | None = None) -> Model:
    """`model` with its input shapes fixed where given and shape arithmetic folded (fold-shapes)."""
    from qcompiler.passes import FoldShapes

    if input_shapes or any(n.op in ("Shape", "Size") for n in model.graph.nodes):
        return FoldShapes(resolve_input_shapes(model, input_shapes))(model).model
    return model


def write_library(library, qdq: Model, out_dir) -> list:
    """model.so, model.json and model.qdq.onnx in out_dir, each written atomically."""
    import json
    from pathlib import Path

    from qcompiler import __version__, files
    from qcompiler.backends.tvm.build import export, metadata
    from qcompiler.ir import save

    out = files.prepare_output_dir(Path(out_dir))
    onnx_model = qdq.to_onnx()
    meta = metadata(onnx_model, library, __version__)
    paths = [export(library, out / "model.so"), out / "model.json", out / "model.qdq.onnx"]
    files.write_text_atomic(paths[1], json.dumps(meta, indent=1))
    save(qdq, paths[2])
    return paths
