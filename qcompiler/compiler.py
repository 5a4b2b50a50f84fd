"""The driver's second half: inspect, optimize and compile (quantize lives in qcompiler.driver).

`compile` takes a float model (it quantizes first), a QDQ model, or a QuantizeRun; builds the
integer library for a target with the TVM backend; writes it; and, on the host, checks it
against the QDQ model as written, in output LSBs.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import numpy as np

from qcompiler import supervise
from qcompiler.backends.tvm.hexagon import DRIVER_FILES as HEXAGON_DRIVER_FILES
from qcompiler.backends.tvm.hexagon import KERNEL_FILES as HEXAGON_KERNEL_FILES
from qcompiler.driver import (QuantizeRun, _as_model, build_pipeline, dynamic_inputs, fix_shapes, quantize,
                              resolve_input_shapes)
from qcompiler.errors import UsageError
from qcompiler.evaluation import Evaluation
from qcompiler.ir import Model, ops_histogram
from qcompiler.pass_infra import DumpAfterInstrument, PassContext
from qcompiler.quant.presets import QuantConfig
from qcompiler.report import ReportData
from qcompiler.summary import Summary, summarize


def counts(counter: Counter | dict) -> str:
    """'Conv 3, Gemm 1': a histogram in one line, sorted by name."""
    return ", ".join(f"{k} {v}" for k, v in sorted(counter.items()))


def split_line(lowered: Counter, float_ops: Counter) -> str:
    return f"integer ops: {counts(lowered) or 'none'}; float fallback: {counts(float_ops) or 'none'}"


# ---- inspect -----------------------------------------------------------------------------------

@dataclasses.dataclass
class InspectRun:
    summary: Summary
    split: str          # what compile would run in integer and in float at W8A8 (or why it cannot say)
    blocks: list        # partition-blocks' Blocks, when asked for
    granularity: str | None


def inspect(model: Model | str | Path, input_shapes: dict | None = None, granularity: str | None = None) -> InspectRun:
    """What the model is, what the default pipeline makes of it, what the backend cannot lower,
    what compile would run in integer, and (with a granularity) the blocks BRECQ reconstructs."""
    from qcompiler.backends.tvm.build import unconvertible_ops
    from qcompiler.passes.partition_blocks import partition

    model = _as_model(model)
    optimized = build_pipeline()(fix_shapes(model.copy(), input_shapes)).model
    folded = sum(rule != "bn-to-mul-add" for rule, _ in optimized.analysis.get("fold-batchnorm", []))
    summary = summarize(model, optimized, folded, producer=model.metadata.get("producer", ""),
                        unsupported=unconvertible_ops(optimized.to_onnx()))
    split = "" if summary.unsupported else integer_split(model, input_shapes)
    blocks = partition(optimized, granularity) if granularity else []
    return InspectRun(summary, split, blocks, granularity)


def refuse_what_the_backend_cannot_lower(model: Model, input_shapes: dict | None = None) -> None:
    """Exit 4 naming every op TVM cannot lower (inspect's list), before any calibration: the float
    model through the default pipeline, as quantization will see it. (The build checks the QDQ
    model again: shapes known only from the calibration data can show more.)"""
    from qcompiler.backends.tvm.build import check_ops

    with supervise.stage("the check of the model's ops against the TVM backend"):
        optimized = build_pipeline()(fix_shapes(model.copy(), input_shapes)).model
    check_ops(optimized.to_onnx(), str(model.path or "model"))


def integer_split(model: Model, shapes: dict | None = None) -> str:
    """What `compile` would run in integer and in float at W8A8: the model quantized with random
    calibration inputs (placement does not depend on the values) and lowered by the backend."""
    from qcompiler import testing
    from qcompiler.backends.tvm.build import lower

    if dynamic_inputs(model) and not shapes:
        return (f"integer/float split: inputs {dynamic_inputs(model)} have dynamic dimensions beyond the batch; "
                "give --input-shape to see it")
    shapes = resolve_input_shapes(model, shapes)   # a one-input model's "" key named
    batches = {shape[0] for shape in shapes.values() if shape[0] > 0}   # a batch the shapes fix
    batch = batches.pop() if len(batches) == 1 else 2
    calib = testing.random_inputs(model, batch=batch)
    for name, shape in shapes.items():
        calib[name] = np.random.default_rng(0).standard_normal((batch, *shape[1:])).astype(np.float32)
    qdq = quantize(model, calib, QuantConfig(), progress=False, input_shapes=shapes).qdq
    integer = lower(qdq.to_onnx(), 1)
    return "at w8a8, compile lowers: " + split_line(integer.lowered, integer.float_ops)


# ---- optimize ----------------------------------------------------------------------------------

@dataclasses.dataclass
class OptimizeRun:
    model: Model
    pipeline: str
    ops_before: dict
    ops_after: dict
    check: str  # the optimized model against the original on random inputs, in words

    def op_changes(self) -> str:
        before, after = self.ops_before, self.ops_after
        changes = [f"{op} {before.get(op, 0)}->{after.get(op, 0)}" for op in sorted(set(before) | set(after))
                   if before.get(op, 0) != after.get(op, 0)]
        return ", ".join(changes) or "no change"


def optimize(model: Model | str | Path, passes=None, context: PassContext | None = None, extra=()) -> OptimizeRun:
    """Run graph passes (names or instances; the default pipeline if None, then `extra`) and check
    the result computes what the original did."""
    model = _as_model(model)
    manager = build_pipeline(passes, context)
    manager.passes += list(extra)
    unknown_dumps = set(getattr(manager.context.instrument(DumpAfterInstrument), "names", ())) - \
        {p.display_name for p in manager.passes}
    if unknown_dumps:
        raise UsageError(f"--dump-after {sorted(unknown_dumps)}: not in the pipeline {manager.describe()}")
    reference = model.copy()
    result = manager(model).model
    return OptimizeRun(result, manager.describe(), ops_histogram(reference.graph.nodes),
                       ops_histogram(result.graph.nodes), equivalence(reference, result))


def equivalence(reference: Model, optimized: Model) -> str:
    """Run both models on the same random inputs in onnxruntime and report the largest difference."""
    from qcompiler import testing

    try:
        feeds = testing.random_inputs(reference)
        expected, actual = testing.run(reference, feeds), testing.run(optimized, feeds)
    except Exception as exc:  # e.g. non-float inputs or ops onnxruntime lacks: say so, do not fail the run
        return f"skipped ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})"
    worst = 0.0
    for e, a in zip(expected, actual):
        scale = max(float(np.abs(e).max(initial=0.0)), 1e-30)
        worst = max(worst, float(np.abs(np.asarray(a, np.float64) - e).max(initial=0.0)) / scale)
    verdict = "same function" if worst <= testing.tolerance(np.float32) else "OUTPUTS DIFFER"
    return f"{verdict}: max |difference| {worst:.2g} of the output's range (random inputs, onnxruntime)"


# ---- compile -----------------------------------------------------------------------------------

@dataclasses.dataclass
class CompileRun:
    """What `compile` built: the QDQ model it compiled, the library (backends.tvm.build.Library),
    the quantization run when it quantized, the check against the QDQ model, the files written."""

    qdq: Model
    library: object
    quantized: QuantizeRun | None = None
    fidelity: list = dataclasses.field(default_factory=list)   # qcompiler.fidelity.Fidelity per output
    reference_spread: float | None = None   # onnxruntime optimized vs as written, when the check is > 1 LSB
    paths: list = dataclasses.field(default_factory=list)
    output_dir: Path | None = None
    report: ReportData | None = None   # the quantization report written beside the library
    latency: object = None   # backends.tvm.runtime.Timing of the written library, under a --max-latency budget
    checked_by: str = ""   # where the check ran: "" (this process), or the emulator ("qemu-aarch64", "qemu-hexagon")
    unchecked: str = ""    # why a library for another machine was not checked (no emulator here), in words

    @property
    def target(self):
        return self.library.target

    def split(self) -> str:
        return split_line(self.library.lowered, self.library.float_ops)

    def load(self):
        """The written library, loaded to run here (under qemu for an arm64 target)."""
        if self.output_dir is None:
            raise UsageError("this library was not written: give compile an output_dir to load it")
        from qcompiler.backends.tvm.runtime import load_for_host

        return load_for_host(self.output_dir)


#: A Hexagon library's own files, in place of model.so.
HEXAGON_OUTPUTS = (*HEXAGON_KERNEL_FILES, *HEXAGON_DRIVER_FILES)


def compile(model: Model | QuantizeRun | str | Path, calib=None, target: str = "native", *, batch: int = 1,
            output_dir: str | Path | None = None, config: QuantConfig | None = None,
            input_shapes: dict | None = None, evaluation: Evaluation | None = None, evaluation_source: str = "",
            check_samples: int = 64, allow_float: bool = False, tuning_db=None, **quantize_options) -> CompileRun:
    """Quantize (a float model, with `calib`), build the integer library for `target`, write it to
    `output_dir` (model.so, model.json, model.qdq.onnx, and report.html when it quantized) and
    compare it with the QDQ model on up to `check_samples` calibration samples: in this process
    for a host target, under the target's emulator (qemu) on up to EMULATED_CHECK_SAMPLES of them
    for an arm64 or Hexagon one when this machine has it set up.
    `allow_float`: a Hexagon build accepts ops left in float (scalar on the DSP; refused, exit 4).
    `tuning_db`: a database from `qcompiler tune` for this model and target (compile_qdq).
    `quantize_options` go to qcompiler.driver.quantize (calib_count, preprocess, reconstruct, ...)."""
    from qcompiler.backends.tvm.targets import get_target

    spec = get_target(target) if isinstance(target, str) else target
    run = model if isinstance(model, QuantizeRun) else None
    if run is None:
        model = _as_model(model)
        if not any(n.op in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.nodes):
            if calib is None:
                raise UsageError(f"{model.path or 'the model'} is a float model: give calibration data to quantize "
                                 "it first (or an already quantized *.qdq.onnx)")
            refuse_what_the_backend_cannot_lower(model, input_shapes)
            run = quantize(model, calib, config, input_shapes=input_shapes, **quantize_options)
    qdq = run.qdq if run is not None else fix_shapes(model, input_shapes)
    built = CompileRun(qdq, compile_qdq(qdq, spec, batch, allow_float=allow_float, tuning_db=tuning_db), run)
    if output_dir is not None:
        _write(built, Path(output_dir), evaluation, evaluation_source)
        if run is not None and check_samples:
            _check_here_or_emulated(built, spec, run.calibration, check_samples)
        elif check_samples:
            built.unchecked = ("not checked: the check runs on the samples compile quantizes with, and this model "
                               "came quantized (compile the float model with --calib to have the library checked)")
        if spec.host and run is not None and run.mixed is not None and run.mixed.whole is not None and batch == 1:
            # The budget was a prediction (kernels timed alone plus the rest of a reference
            # library): measure what was built against it.
            built.latency = built.load().time(dict(run.calibration.head(1).arrays), repeat=50)
    return built


#: The files a library folder holds (model.qdq.onnx.data only for models over 2 GiB; report.html
#: only when compile quantized): all written, or none.
LIBRARY_OUTPUTS = ("model.so", "model.json", "model.qdq.onnx", "model.qdq.onnx.data", "report.html",
                   *HEXAGON_OUTPUTS)


def _write(built: CompileRun, out: Path, evaluation: Evaluation | None, evaluation_source: str) -> None:
    from qcompiler.files import OutputSet

    outputs = OutputSet(out, LIBRARY_OUTPUTS, force=True, inputs=[built.qdq.path])
    with outputs.staging() as stage:
        if built.quantized is not None:
            built.report = built.quantized.report(evaluation, evaluation_source)
            built.paths.append(built.quantized.write_report(stage, built.report))   # the QDQ model: with the library
        built.paths = [outputs.final(p) for p in write_library(built.library, built.qdq, stage) + built.paths]
    built.output_dir = Path(out)


#: Samples the check runs under an emulator (qemu is slow; each sample is a whole model run).
EMULATED_CHECK_SAMPLES = 4


def _check_here_or_emulated(built: CompileRun, spec, data, samples: int) -> None:
    """_check in this process for a host target, else under the target's emulator when it is set
    up (a library for a DSP nobody checked is how a wrong kernel would reach a device)."""
    if spec.host:
        _check(built, data.head(min(samples, data.count)))
        return
    if spec.runner is None:
        built.unchecked = f"not checked: this machine cannot run {spec.name} libraries"
        return
    try:
        _emulator_ready(spec.runner)
    except UsageError as exc:
        built.unchecked = f"not checked under {spec.runner}: {exc}"
        return
    built.checked_by = spec.runner
    _check(built, data.head(min(samples, EMULATED_CHECK_SAMPLES, data.count)))


def _emulator_ready(runner: str) -> None:
    """Raises UsageError (naming the setup script) when the emulator or its environment is missing."""
    if runner == "qemu-hexagon":
        from qcompiler.backends.tvm.qemu_hexagon import tools_ready

        tools_ready()
    else:
        from qcompiler.backends.tvm.qemu import environment

        environment()


def _check(built: CompileRun, data) -> None:
    """The library against the QDQ model as written (onnxruntime), in output LSBs."""
    from qcompiler.fidelity import compare, reference_spread

    feeds, proto = dict(data.arrays), built.qdq.to_onnx()
    with supervise.stage("the check of the library against its QDQ model"):
        built.fidelity = compare(proto, built.load(), feeds)
    if any(f.max_lsb > 1.0 + 1e-4 for f in built.fidelity):
        built.reference_spread = reference_spread(proto, feeds)


def compile_qdq(qdq: Model, target="native", batch: int = 1, input_shapes: dict | None = None,
                allow_float: bool = False, tuning_db=None):
    """Build the QDQ model into an integer library for a target (in memory; `write_library` saves it).

    Shape arithmetic left in the model is folded first, at `input_shapes` where given (write
    the library with the model `fix_shapes` returns). `tuning_db` (a path or a
    tuning.TuningDatabase from `qcompiler tune`) gives the convolution kernels their tuned
    tiles; the library lists those that took one (`tuned_kernels`)."""
    from qcompiler.backends.tvm import tuning
    from qcompiler.backends.tvm.build import build
    from qcompiler.backends.tvm.targets import get_target

    spec = get_target(target) if isinstance(target, str) else target
    if tuning_db is not None and not isinstance(tuning_db, tuning.TuningDatabase):
        tuning_db = tuning.TuningDatabase.load(tuning_db, spec.name)
    qdq = fix_shapes(qdq, input_shapes)
    with supervise.stage("the TVM build"), tuning.applied(tuning_db):
        library = build(qdq.to_onnx(), spec, batch, name=str(qdq.path or "model"), allow_float=allow_float)
    if tuning_db is not None:
        library.tuned_kernels = sorted(tuning_db.used)
    return library


def write_library(library, qdq: Model, out_dir) -> list:
    """model.so, model.json and model.qdq.onnx in out_dir, each written atomically."""
    import json

    from qcompiler import __version__, files
    from qcompiler.backends.tvm.build import export, metadata
    from qcompiler.backends.tvm.runtime import library_digest
    from qcompiler.ir import save

    out = files.prepare_output_dir(Path(out_dir))
    onnx_model = qdq.to_onnx()
    meta = metadata(onnx_model, library, __version__)
    if library.target.driver == "c":
        from qcompiler.backends.tvm.hexagon import write_files

        written = write_files(library.executable, meta, f"{qdq.path or 'the model'} for {library.target.name}", out)
        meta["library"], meta["target"]["arch"] = written[0].name, library.executable.arch
        paths = [written[0], out / "model.json", out / "model.qdq.onnx", *written[1:]]
    else:
        paths = [export(library, out / "model.so"), out / "model.json", out / "model.qdq.onnx"]
    meta["library_sha256"] = library_digest(paths[0])   # checked at load: a folder's files belong together
    files.write_text_atomic(paths[1], json.dumps(meta, indent=1))
    save(qdq, paths[2])
    return paths
