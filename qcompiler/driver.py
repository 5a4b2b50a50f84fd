"""The driver: the one place that wires passes (and, later, backends) into pipelines."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from qcompiler.blocks import ReconstructConfig
from qcompiler.data import Dataset, ImagePreprocess, load_data
from qcompiler.errors import UnsupportedModelError
from qcompiler.ir import INT4_DTYPES, Model
from qcompiler.pass_infra import Pass, PassContext, PassManager
from qcompiler.quant.presets import QuantConfig


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


def quantize(model: Model, calib, config: QuantConfig | None = None, *, calib_count: int | None = None,
             preprocess: ImagePreprocess | None = None, batch_size: int | None = None, progress: bool = True,
             context: PassContext | None = None, reconstruct: ReconstructConfig | None = None) -> Quantized:
    """Post-training quantization: canonicalize, fold BN, annotate, calibrate, then either
    reconstruct blocks (BRECQ, when `reconstruct` is given) or correct biases (unless the config
    turns it off), insert QDQ.

    `calib`: a .npz/.npy path or image folder, a dict of arrays, or an iterable of feed dicts.
    """
    from qcompiler.passes import AnnotateQuant, CalibrateRanges, CorrectBias, InsertQDQ, ReconstructBlocks

    config = config or QuantConfig()
    qdq_nodes = [n.name for n in model.graph.nodes if n.op in ("QuantizeLinear", "DequantizeLinear")]
    if qdq_nodes:
        raise UnsupportedModelError(
            f"{model.path or 'model'}: already quantized ({len(qdq_nodes)} QuantizeLinear/DequantizeLinear nodes, "
            f"e.g. {qdq_nodes[0]}); quantize the float model instead")
    float_model = build_pipeline(None, context)(model).model
    data = load_data(calib, float_model, preprocess=preprocess, limit=calib_count)
    reconstructor = ReconstructBlocks(data, reconstruct, progress) if reconstruct is not None else None
    corrector = CorrectBias(data, batch_size, progress) if reconstruct is None and config.bias_correction else None
    steps = [AnnotateQuant(config), CalibrateRanges(data, batch_size, progress)]
    steps += [step for step in (reconstructor, corrector) if step is not None]
    annotated = PassManager(steps, context)(float_model.copy()).model
    insert = InsertQDQ()
    qdq = PassManager([insert], context)(annotated.copy()).model
    return Quantized(float_model, annotated, qdq, insert.dequantized, config, data,
                     reconstructor.reports if reconstructor else [], corrector.shifts if corrector else {})


def constant_bytes(model: Model) -> int:
    """Bytes of a model's constants as stored in ONNX (INT4/UINT4 two values per byte)."""
    total = 0
    for tensor in model.tensors().values():
        values = getattr(tensor, "values", None)
        if values is not None:
            values = np.asarray(values)
            total += (values.size + 1) // 2 if values.dtype in INT4_DTYPES else values.nbytes
    return total


def compile_qdq(qdq: Model, target: str = "x86", batch: int = 1):
    """Build the QDQ model into an integer library for a target (in memory; `write_library` saves it)."""
    from qcompiler.backends.tvm.build import build

    return build(qdq.to_onnx(), target, batch, name=str(qdq.path or "model"))


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
