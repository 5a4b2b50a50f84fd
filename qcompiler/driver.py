"""The driver: the Python API's engine and the one place that wires passes and backends into
pipelines (docs/architecture.md). The CLI parses options, calls these and prints the results.

    run = qcompiler.quantize("model.onnx", "calib.npz", "w8a8")     # -> QuantizeRun
    built = qcompiler.compile("model.onnx", "calib.npz", target="native", output_dir="out")
    outputs = built.load().run(x)                                    # -> CompileRun, then run it

This module holds quantization (and the shape fixing it shares); qcompiler.compiler holds
inspect, optimize and compile, which build on it.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from qcompiler.blocks import ReconstructConfig
from qcompiler.data import Dataset, ImagePreprocess, load_data
from qcompiler.errors import UnsupportedModelError, UsageError
from qcompiler.evaluation import Evaluation, evaluate as evaluate_models, tensor_errors
from qcompiler.ir import INT4_DTYPES, Model, load
from qcompiler.pass_infra import Instrument, Pass, PassContext, PassManager
from qcompiler.quant.annotation import weight_values
from qcompiler.quant.presets import QuantConfig
from qcompiler.report import ReportData
from qcompiler.training import TrainConfig, TrainReport

log = logging.getLogger(__name__)


def build_pipeline(passes: Sequence[str | Pass] | None = None, context: PassContext | None = None) -> PassManager:
    """A PassManager over pass names (looked up in the registry) or instances; default pipeline if None."""
    from qcompiler import passes as builtin  # registers the built-in passes

    chosen = builtin.DEFAULT_PIPELINE if passes is None else passes
    instances = [p if isinstance(p, Pass) else builtin.get_pass(p)() for p in chosen]
    return PassManager(instances, context)


def _as_model(model: Model | str | Path) -> Model:
    return model if isinstance(model, Model) else load(model)


# ---- quantize --------------------------------------------------------------------------------

@dataclasses.dataclass
class QuantizeRun:
    """What `quantize` produces: the float model it started from (canonicalized, BN folded),
    the same model annotated with calibrated QuantSpecs, the QDQ model, and what each step did."""

    float_model: Model
    annotated: Model
    qdq: Model
    dequantized: dict[str, str]  # quantized tensor -> its dequantized name in `qdq`
    config: QuantConfig
    calibration: Dataset
    reconstruction: list = dataclasses.field(default_factory=list)  # BlockReports, when reconstructed
    bias_shifts: dict = dataclasses.field(default_factory=dict)  # layer -> largest bias change (correct-bias)
    untied: dict = dataclasses.field(default_factory=dict)  # Concat -> why its scales were untied
    reconstruct: ReconstructConfig | None = None
    seconds: float = 0.0
    source: str = ""  # the model's path
    calibration_source: str = ""
    training: TrainReport | None = None  # when trained (QIL/QAT)
    mixed: object = None  # qcompiler.mixed_precision.MixedPrecision, with --bits auto
    reconstruction_estimate: object = None  # qcompiler.sim.estimate.Estimate, made before reconstruction
    widened: dict = dataclasses.field(default_factory=dict)  # activation -> bulk SQNR dB at 8 and at 16 bits
    #: correct-bias after reconstruction: the output's SQNR (dB) on the calibration data without
    #: and with the correction, which is kept only if it is higher.
    bias_check: tuple | None = None

    def report(self, evaluation: Evaluation | None = None, evaluation_source: str = "") -> ReportData:
        """The report's data: per-tensor errors on the first 64 calibration samples, sizes, settings."""
        from qcompiler.report_layers import graph_order, layer_rows

        preset = self.config.preset
        order = graph_order(self.annotated)
        tensors = sorted(tensor_errors(self.annotated, self.qdq, self.dequantized, self.calibration.head(64),
                                       self.float_model), key=lambda t: order.get(t.name, len(order)))
        observer = (self.config.activation_observer or preset.activations.observer) if preset.activations.bits \
            else "none (weight-only preset: activations stay float)"
        return ReportData(
            model_path=self.source, preset=preset.name, observer=observer, calibration=self.calibration_source,
            calibration_samples=self.calibration.count, evaluation=evaluation, evaluation_source=evaluation_source,
            tensors=tensors, layers=layer_rows(self.annotated, tensors, self.mixed),
            float_bytes=constant_bytes(self.float_model), quant_bytes=constant_bytes(self.qdq), seconds=self.seconds,
            weight_values=weight_values(self.annotated), reconstruction=self.reconstruction,
            reconstruction_setting=self.reconstruction_setting(),
            bias_correction=self.bias_correction(), untied=self.untied, training=self.training, mixed=self.mixed,
            widened=self.widened)

    def reconstruction_setting(self) -> str:
        """BRECQ's settings and the time estimated before it ran (the row adds the time it took)."""
        if self.reconstruct is None:
            return ""
        estimate = self.reconstruction_estimate
        return self.reconstruct.describe() + (f" ({estimate.describe()})" if estimate is not None else "")

    def bias_correction(self) -> str:
        """What correct-bias did, in words ("" when training ran instead: its row says so)."""
        if self.training is not None:
            return ""
        if not self.config.bias_correction:
            return "off"
        if self.reconstruct is not None and self.reconstruct.bias_lr:
            return "not run: reconstruction learned the biases (--learn-bias)"
        check = "" if self.bias_check is None else \
            "output SQNR on the calibration data {:.1f} dB without it, {:.1f} dB with it".format(*self.bias_check)
        if not self.bias_shifts:
            return f"not kept after reconstruction: {check}" if check else "no Conv/Gemm layer with quantized weights"
        if check:
            return (f"{len(self.bias_shifts)} layers after reconstruction (mean shift of the learned rounding folded "
                    f"into the biases; largest change {max(self.bias_shifts.values()):.3g}; {check})")
        return (f"{len(self.bias_shifts)} layers (mean output shift of weight rounding folded into the biases; "
                f"largest change {max(self.bias_shifts.values()):.3g})")

    def save(self, out_dir: str | Path, report: ReportData | None = None, *, force: bool = True) -> list[Path]:
        """model.qdq.onnx and report.html in out_dir, both or neither (files.OutputSet); with
        force=False existing ones are refused (OutputError)."""
        from qcompiler import files, ir

        outputs = files.OutputSet(out_dir, QUANTIZE_OUTPUTS, force=force, inputs=[self.float_model.path])
        with outputs.staging() as stage:
            written = [ir.save(self.qdq, stage / "model.qdq.onnx"), self.write_report(stage, report)]
        return [outputs.final(p) for p in written]

    def write_report(self, out_dir: Path, report: ReportData | None = None) -> Path:
        """report.html in out_dir (an existing folder), written atomically."""
        from qcompiler import files
        from qcompiler.report import write_html

        path = Path(out_dir) / "report.html"
        files.write_text_atomic(path, write_html(report or self.report()))
        return path


#: The files `QuantizeRun.save` writes (model.qdq.onnx.data only for models over 2 GiB).
QUANTIZE_OUTPUTS = ("model.qdq.onnx", "model.qdq.onnx.data", "report.html")

#: Kept for code written against the first API.
Quantized = QuantizeRun


class _KeepInputs(Instrument):
    """A copy of the model as each named pass receives it: the float model (before annotate-quant)
    and the annotated one (before insert-qdq), which the report compares."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names, self.models = set(names), {}

    def before_pass(self, pass_: Pass, model: Model) -> None:
        if pass_.display_name in self.names:
            self.models[pass_.display_name] = model.copy()


def quantization_pipeline(config: QuantConfig, data: Dataset, *, shapes: dict | None = None,
                          reconstruct: ReconstructConfig | None = None, batch_size: int | None = None,
                          progress: bool = True, train: TrainConfig | None = None, train_data: Dataset | None = None,
                          held_out: Dataset | None = None, assign: Pass | None = None) -> list[Pass]:
    """The passes of quantization, in order: [fold-shapes], the default pipeline, annotate,
    [assign bit widths], calibrate, untie concats, widen activations that 8 bits would lose,
    then train (QIL/QAT, on `train_data`) or [reconstruct (BRECQ)] and correct biases (unless
    reconstruction learned them),
    insert QDQ."""
    from qcompiler import passes as p

    steps = float_pipeline(shapes)
    steps += [p.AnnotateQuant(config), *([assign] if assign is not None else []),
              p.CalibrateRanges(data, batch_size, progress), p.UntieConcats(config, data, batch_size, progress),
              p.WidenActivations(config, data, batch_size, progress)]
    if train is not None:
        steps.append(p.TrainQuant(train_data or data, train, held_out, progress))
    elif reconstruct is not None:
        steps.append(p.ReconstructBlocks(data, reconstruct, progress))
    # After reconstruction too, where it raises the output's SQNR: a short reconstruction of a
    # depthwise net needs it, a converged one is better without (docs/brecq.md has the measurements).
    # Not where reconstruction learned the biases: it would correct them twice.
    if config.bias_correction and train is None and not (reconstruct and reconstruct.bias_lr):
        steps.append(p.CorrectBias(data, batch_size, progress, guarded=reconstruct is not None))
    return steps + [p.InsertQDQ()]


def float_pipeline(shapes: dict | None = None) -> list[Pass]:
    """The passes before annotation: [fold-shapes], then the default pipeline (canonicalize, fold BN and scales)."""
    from qcompiler import passes as p

    return ([p.FoldShapes(shapes)] if shapes else []) + [p.get_pass(name)() for name in p.DEFAULT_PIPELINE]


def shapes_to_fix(model: Model, given: dict | None, arrays: dict) -> dict | None:
    """The input shapes the float pipeline folds: the given ones, or the data's where an input is
    dynamic (resolve_input_shapes); None: keep the model's own."""
    return resolve_input_shapes(model, given, arrays) if given or dynamic_inputs(model) else None


def float_model(model: Model, shapes: dict | None) -> Model:
    """`model` through float_pipeline(shapes): what annotation, sensitivities and costs start from."""
    return PassManager(float_pipeline(shapes))(model).model


def quantize(model: Model | str | Path, calib, config: QuantConfig | None = None, *, calib_count: int | None = None,
             preprocess: ImagePreprocess | None = None, batch_size: int | None = None, progress: bool = True,
             context: PassContext | None = None, reconstruct: ReconstructConfig | None = None,
             input_shapes: dict[str, tuple[int, ...]] | None = None, train: TrainConfig | None = None,
             train_data=None, train_count: int | None = None, held_out=None, bits=None) -> QuantizeRun:
    """Post-training quantization, one PassManager over `quantization_pipeline` under `context`
    (its instruments see every pass).

    `calib`: a .npz/.npy path or image folder, a dict of arrays, or an iterable of feed dicts.
    `input_shapes`: input name -> shape to fix (first dimension -1: keep a dynamic batch); inputs
    with dynamic dimensions beyond the batch otherwise take the calibration data's shape.
    `train`: QILConfig or QATConfig, trained on `train_data` (like `calib`; default: the
    calibration data) and evaluated each epoch on `held_out` (like `calib`, with 'labels' for top-1).
    `bits`: a qcompiler.mixed_precision.BitBudget: weight bits per layer searched under its budget.
    """
    start = time.perf_counter()
    model, config = _as_model(model), config or QuantConfig()
    qdq_nodes = [n.name for n in model.graph.nodes if n.op in ("QuantizeLinear", "DequantizeLinear")]
    if qdq_nodes:
        raise UnsupportedModelError(
            f"{model.path or 'model'}: already quantized ({len(qdq_nodes)} QuantizeLinear/DequantizeLinear nodes, "
            f"e.g. {qdq_nodes[0]}); quantize the float model instead")
    data = load_data(calib, model, preprocess=preprocess, limit=calib_count)
    shapes = shapes_to_fix(model, input_shapes, data.arrays)
    if train is not None and reconstruct is not None:
        raise UsageError("choose training (QIL/QAT) or reconstruction (BRECQ), not both")
    training = held = None
    if train is not None:
        training = data if train_data is None else load_data(train_data, model, what="training",
                                                             preprocess=preprocess, limit=train_count)
        held = None if held_out is None else load_data(held_out, model, what="evaluation", preprocess=preprocess)
    mixed = assign = None
    if bits is not None:
        from qcompiler import mixed_precision
        from qcompiler.passes import AssignBitWidths

        mixed = mixed_precision.plan(float_model(model, shapes), config, data, bits, progress)
        assign = AssignBitWidths(mixed.problem, config, bits.method, bits.seed)
    keep = _KeepInputs(["annotate-quant", "insert-qdq"])
    context = context or PassContext()
    manager = PassManager(quantization_pipeline(config, data, shapes=shapes, reconstruct=reconstruct,
                                                batch_size=batch_size, progress=progress, train=train,
                                                train_data=training, held_out=held, assign=assign),
                          PassContext([*context.instruments, keep], context.options))
    qdq = manager(model).model
    if mixed is not None:
        mixed.assignment = qdq.analysis["assign-bit-widths"]
        mixed.baselines = mixed_precision.baselines(mixed.problem)
    untied = qdq.analysis.get("untie-concats", {})
    widened = qdq.analysis.get("widen-activations", {})
    config = dataclasses.replace(config, untied_concats=frozenset(untied), wide_activations=frozenset(widened))
    return QuantizeRun(keep.models["annotate-quant"], keep.models["insert-qdq"], qdq, qdq.analysis["insert-qdq"]
                       if "insert-qdq" in qdq.analysis else {}, config, data,
                       qdq.analysis.get("reconstruct-blocks", []), qdq.analysis.get("correct-bias", {}), untied,
                       reconstruct, time.perf_counter() - start, str(model.path or ""),
                       calib if isinstance(calib, (str, Path)) else type(calib).__name__,
                       qdq.analysis.get("train-quant"), mixed, qdq.analysis.get("reconstruct-blocks estimate"), widened,
                       qdq.analysis.get("correct-bias output sqnr"))


def evaluate(run: QuantizeRun, data, *, preprocess: ImagePreprocess | None = None,
             progress: bool = True) -> Evaluation:
    """The QDQ model against the float model on held-out `data` (like `calib`, optionally with a
    'labels' array): top-1 accuracy and agreement, KL, SQNR."""
    held_out = load_data(data, run.float_model, what="evaluation", preprocess=preprocess)
    return evaluate_models(run.float_model, run.qdq, held_out, progress=progress)


# ---- shapes ------------------------------------------------------------------------------------

def dynamic_inputs(model: Model) -> list[str]:
    """Inputs with a dynamic dimension beyond the first (the batch): their shape must be fixed to compile."""
    return [t.name for t in model.graph.inputs
            if any(not isinstance(d, int) or d <= 0 for d in list(t.shape or ())[1:])]


def resolve_input_shapes(model: Model, given: dict | None, arrays: dict | None = None) -> dict[str, tuple]:
    """The shape to fix each input at: as given (the key "" names a one-input model's input),
    else (for dynamic inputs) the data's sample shape behind a batch kept dynamic (-1) where
    the model's batch is."""
    given = dict(given or {})
    names = [t.name for t in model.graph.inputs]
    if "" in given:
        if len(names) != 1:
            raise UsageError(f"--input-shape {','.join(map(str, given['']))}: the model has inputs {names}; "
                             "say which, as NAME=D,D,...")
        given[names[0]] = given.pop("")
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise UsageError(f"--input-shape names {unknown}, which the model does not have as inputs "
                         f"(its inputs: {names})")
    for name in dynamic_inputs(model):
        if name not in given and arrays is not None and name in arrays:
            first = (list(model.tensor(name).shape or [None]) or [None])[0]
            given[name] = (first if isinstance(first, int) and first > 0 else -1, *arrays[name].shape[1:])
    return given


def fix_shapes(model: Model, input_shapes: dict | None = None) -> Model:
    """`model` with its input shapes fixed where given and shape arithmetic folded (fold-shapes)."""
    from qcompiler.passes import FoldShapes

    if input_shapes or any(n.op in ("Shape", "Size") for n in model.graph.nodes):
        return FoldShapes(resolve_input_shapes(model, input_shapes))(model).model
    return model


def constant_bytes(model: Model) -> int:
    """Bytes of a model's constants as stored in ONNX (INT4/UINT4 two values per byte)."""
    total = 0
    for tensor in model.tensors().values():
        values = getattr(tensor, "values", None)
        if values is not None:
            values = np.asarray(values)
            total += (values.size + 1) // 2 if values.dtype in INT4_DTYPES else values.nbytes
    return total
