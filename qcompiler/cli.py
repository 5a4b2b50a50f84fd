"""The `qcompiler` command line. Exit codes (DESIGN.md §8): 0 ok, 2 usage, 3 invalid or unsafe
model, 4 unsupported model, 5 calibration data, 6 output, 7 remote device, 70 internal error,
130 interrupted. User errors print one line, never a traceback (`--debug` shows one)."""

from __future__ import annotations

import argparse
import functools
import logging
import sys
from pathlib import Path

import numpy as np

from qcompiler import __version__
from qcompiler.blocks import GRANULARITIES, ReconstructConfig
from qcompiler.errors import QCompilerError, UsageError

log = logging.getLogger("qcompiler")

# Names for --help only (the modules that own them are imported when a command runs).
PRESET_NAMES = ("w8a8", "w8a8-per-tensor", "w4a8", "w4a4", "w2a4", "w4", "w2")
OBSERVER_NAMES = ("minmax", "ema", "percentile", "mse", "kl")


class _Parser(argparse.ArgumentParser):
    """argparse that raises UsageError (exit 2, one line) instead of printing and exiting itself."""

    def error(self, message: str) -> None:
        raise UsageError(f"{self.prog}: {message} (see --help)")


EXIT_CODES = """exit codes: 0 ok, 2 usage, 3 invalid or unsafe model, 4 unsupported model,
5 calibration data, 6 output, 7 remote device, 70 internal error, 130 interrupted"""


def _common_options(parser: argparse.ArgumentParser, default) -> None:
    """-v and --debug, accepted before and after the command (`default` SUPPRESS on commands)."""
    parser.add_argument("-v", "--verbose", action="count", default=default if default is argparse.SUPPRESS else 0,
                        help="more logging (-vv: why rewrite rules did not apply)")
    parser.add_argument("--debug", action="store_true", default=default if default is argparse.SUPPRESS else False,
                        help="show tracebacks of internal errors")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="qcompiler", description="A quantizing model compiler for ONNX models.", epilog=EXIT_CODES)
    parser.add_argument("--version", action="version", version=f"qcompiler {__version__}")
    _common_options(parser, None)
    common = _Parser(add_help=False)
    _common_options(common, argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.add_parser = functools.partial(sub.add_parser, parents=[common], epilog=EXIT_CODES)

    p = sub.add_parser("inspect", help="ops, parameters, inputs/outputs, layers to quantize, unsupported ops")
    p.add_argument("model", type=Path)
    p.add_argument("--all", action="store_true", help="list every quantized layer")
    p.add_argument("--blocks", action="store_true", help="list the blocks BRECQ reconstructs (partition-blocks)")
    p.add_argument("--granularity", choices=GRANULARITIES, default="block", help="for --blocks (default: %(default)s)")
    _input_shape_option(p)

    p = sub.add_parser("optimize", help="run graph passes and write the optimized model")
    p.add_argument("model", type=Path)
    p.add_argument("-o", "--output", type=Path, required=True, help="where to write the model (.onnx)")
    p.add_argument("--passes", help="comma-separated pass names (default: canonicalize,fold-batchnorm,fold-scale)")
    p.add_argument("--pass", dest="user_passes", action="append", default=[], metavar="FILE.py:CLASS",
                   help="also run a pass of your own, from a .py file or module (repeatable)")
    p.add_argument("--dump-after", action="append", default=[], metavar="NAME",
                   help="also write the model after pass NAME as OUTPUT.after-NAME.onnx (repeatable)")
    p.add_argument("--time", action="store_true", help="print the time each pass took")
    p.add_argument("--no-verify", action="store_true", help="skip the ONNX checker after each pass")

    p = sub.add_parser("quantize", help="post-training quantization to a QDQ ONNX model, with a report")
    p.add_argument("model", type=Path)
    p.add_argument("--calib", required=True, help="calibration data: .npz (arrays named after the inputs, "
                   "samples first), .npy (one-input models) or a folder of images")
    p.add_argument("-o", "--output-dir", type=Path, required=True, help="writes model.qdq.onnx and report.html here")
    _quantize_options(p)

    p = sub.add_parser("compile", help="quantize (unless already QDQ) and build an integer library for a target")
    p.add_argument("model", type=Path, help="a float .onnx model, or an already quantized *.qdq.onnx")
    p.add_argument("--calib", help="calibration data as for `quantize` (not needed for a QDQ model)")
    p.add_argument("--target", default="x86", help="x86 (this machine), arm64, arm64-dotprod, arm64-i8mm "
                   "(`qcompiler targets` lists them; default x86)")
    p.add_argument("--batch", type=int, default=1, help="the batch size the library is built for (default 1)")
    p.add_argument("-o", "--output-dir", type=Path, required=True,
                   help="writes model.so, model.json, model.qdq.onnx (and report.html when it quantized) here")
    _quantize_options(p)

    p = sub.add_parser("run", help="run a compiled library on the host")
    p.add_argument("library", type=Path, help="the folder `compile` wrote")
    p.add_argument("--input", required=True, help=".npz with arrays named after the inputs (samples first), "
                   "or .npy for a one-input model")
    p.add_argument("-o", "--output", type=Path, help="write the outputs to this .npz")

    sub.add_parser("targets", help="list the compilation targets")
    _more_commands(sub)
    return parser


def input_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """argparse type of --input-shape: NAME=D,D,... (or D,D,... for a one-input model); -1 keeps a dynamic batch."""
    name, _, dims = text.rpartition("=")
    try:
        shape = tuple(int(d) for d in dims.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=1,3,224,224") from None
    if not shape or any(d == 0 or d < -1 for d in shape) or -1 in shape[1:]:
        raise argparse.ArgumentTypeError(f"{text!r}: sizes must be positive (-1 only first, to keep a dynamic batch)")
    return name, shape


def _input_shape_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input-shape", action="append", default=[], type=input_shape, metavar="NAME=D,D,...",
                   help="fix an input's shape (repeatable); needed where a model has dynamic dimensions beyond the "
                   "batch and no calibration data shows them (default: the calibration data's shape)")


def input_shapes(args: argparse.Namespace, model) -> dict[str, tuple[int, ...]] | None:
    """--input-shape as a dict; a nameless one names the model's only input."""
    shapes = {}
    for name, shape in getattr(args, "input_shape", []):
        if not name:
            inputs = [t.name for t in model.graph.inputs]
            if len(inputs) != 1:
                raise UsageError(f"--input-shape {','.join(map(str, shape))}: the model has inputs {inputs}; "
                                 "say which, as NAME=D,D,...")
            name = inputs[0]
        shapes[name] = shape
    return shapes or None


def _quantize_options(p: argparse.ArgumentParser) -> None:
    _input_shape_option(p)
    p.add_argument("--preset", help=f"quantization scheme (default w8a8): {', '.join(PRESET_NAMES)}")
    p.add_argument("--observer", help=f"activation range observer: {', '.join(OBSERVER_NAMES)} (default: the preset's, mse)")
    p.add_argument("--override", action="append", default=[], metavar="PATTERN:KEY=VALUE",
                   help="per-layer settings for node names matching PATTERN: wbits=, abits=, wobserver=, skip "
                   "(e.g. '/fc/*:wbits=8'; repeatable)")
    p.add_argument("--config", type=Path, help='JSON file: {"preset": ..., "observer": ..., "overrides": '
                   '[{"pattern": ..., "wbits": 8}], "keep_edge_layers_8bit": true, "bias_correction": true}')
    p.add_argument("--eval", help="held-out data like --calib, optionally with a 'labels' array: accuracy, "
                   "agreement, KL and SQNR against the float model")
    p.add_argument("--calib-count", type=int, help="use at most this many calibration samples")
    p.add_argument("--preprocess", default="none", help="for image folders: 'imagenet', or "
                   "'resize=256,crop=224,mean=0.485/0.456/0.406,std=0.229/0.224/0.225,layout=NCHW,color=RGB'")
    p.add_argument("--batch-size", type=int, help="calibration batch size (default: what fits 256 MiB of activations)")
    p.add_argument("--no-bias-correction", action="store_true", help="keep the biases as trained (by default the mean "
                   "output shift that weight rounding causes is folded into them; not used with --reconstruct)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    _reconstruct_options(p)


def _reconstruct_options(p: argparse.ArgumentParser) -> None:
    defaults = ReconstructConfig()
    g = p.add_argument_group("reconstruction (BRECQ; docs/brecq.md)")
    g.add_argument("--reconstruct", choices=["brecq"], help="learn weight rounding (AdaRound) and activation step "
                   "sizes block by block against the float model")
    g.add_argument("--granularity", choices=GRANULARITIES, default=defaults.granularity,
                   help="what is reconstructed together (default: %(default)s)")
    g.add_argument("--iters", type=int, default=defaults.iters,
                   help="weight-rounding iterations per block (default: %(default)s, the authors')")
    g.add_argument("--act-iters", type=int, help="activation step-size iterations per block "
                   f"(default: a quarter of --iters, the authors' ratio {defaults.act_iters}/{defaults.iters})")
    g.add_argument("--fisher", action="store_true", help="weight the block output error by the Fisher diagonal "
                   "(squared gradients of the KL between quantized and float network outputs)")
    g.add_argument("--qdrop", type=float, default=0.0, metavar="P", help="QDrop: learn rounding and step sizes "
                   "together, keeping each activation in float with probability P (the authors use 0.5)")
    g.add_argument("--reconstruct-samples", type=int, default=defaults.samples,
                   help="calibration samples reconstruction uses at most (default: %(default)s)")
    g.add_argument("--seed", type=int, default=defaults.seed, help="random seed (default: %(default)s)")


def reconstruct_config(args: argparse.Namespace) -> ReconstructConfig | None:
    """The ReconstructConfig the options ask for (None without --reconstruct); bad values are usage errors."""
    if not args.reconstruct:
        for flag, value in (("--fisher", args.fisher), ("--qdrop", args.qdrop)):
            if value:
                raise UsageError(f"{flag} needs --reconstruct brecq")
        return None
    if args.iters < 0 or (args.act_iters or 0) < 0 or args.reconstruct_samples < 1:
        raise UsageError("--iters and --act-iters must be >= 0 and --reconstruct-samples >= 1")
    if not 0.0 <= args.qdrop < 1.0:
        raise UsageError(f"--qdrop {args.qdrop}: a probability in [0, 1)")
    act_iters = args.iters // 4 if args.act_iters is None else args.act_iters
    return ReconstructConfig(granularity=args.granularity, iters=args.iters, act_iters=act_iters, fisher=args.fisher,
                             qdrop=args.qdrop, samples=args.reconstruct_samples, seed=args.seed)


def _more_commands(sub) -> None:
    sub.add_parser("passes", help="list the registered passes")

    p = sub.add_parser("demo", help="the main job on the bundled model: inspect, optimize, quantize, compile, run")
    p.add_argument("-o", "--output-dir", type=Path, default=Path("qcompiler-demo"))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])  # known before parsing succeeds
    try:
        args = parser.parse_args(argv)
        logging.basicConfig(level=(logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)],
                            format="%(levelname)s %(name)s: %(message)s")
        if args.command is None:
            parser.print_help()
            return 2
        return COMMANDS[args.command](args)
    except QCompilerError as exc:
        if debug:
            raise
        print(f"qcompiler: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("qcompiler: interrupted; no partial output was left", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug of ours: say so, in one line, with how to see more
        if debug:
            raise
        print(f"qcompiler: internal error: {type(exc).__name__}: {exc} (rerun with --debug for a traceback "
              "and report it)", file=sys.stderr)
        return 70


def cmd_inspect(args: argparse.Namespace) -> int:
    from qcompiler import ir
    from qcompiler.driver import fix_shapes
    from qcompiler.passes import Canonicalize, FoldBatchNorm, FoldScale
    from qcompiler.summary import format_summary, summarize

    model = ir.load(args.model)
    shapes = input_shapes(args, model)
    optimized = fix_shapes(model.copy(), shapes)
    optimized = Canonicalize()(optimized).model
    fold = FoldBatchNorm()
    optimized = FoldScale()(fold(optimized).model).model
    folded = sum(rule != "bn-to-mul-add" for rule, _ in fold.last_applied)
    from qcompiler.backends.tvm.build import unconvertible_ops

    summary = summarize(model, optimized, folded, producer=model.metadata.get("producer", ""),
                        unsupported=unconvertible_ops(optimized.to_onnx()))
    print(format_summary(summary, max_layers=10**9 if args.all else 40))
    if not summary.unsupported:
        print(_integer_split(model, shapes))
    if args.blocks:
        from qcompiler.passes.partition_blocks import partition

        blocks = partition(optimized, args.granularity)
        print(f"\nblocks ({args.granularity} granularity, after canonicalize + fold-batchnorm + fold-scale): {len(blocks)}")
        for block in blocks:
            print("  " + block.describe())
    return 0


def _integer_split(model, shapes) -> str:
    """What `compile` would run in integer and in float at W8A8: the model quantized with random
    calibration inputs (placement does not depend on the values) and lowered by the backend."""
    from qcompiler import testing
    from qcompiler.backends.tvm.build import lower
    from qcompiler.driver import dynamic_inputs, quantize
    from qcompiler.quant.presets import QuantConfig

    if dynamic_inputs(model) and not shapes:
        return (f"integer/float split: inputs {dynamic_inputs(model)} have dynamic dimensions beyond the batch; "
                "give --input-shape to see it")
    calib = testing.random_inputs(model, batch=2)
    for name, shape in (shapes or {}).items():
        calib[name] = np.random.default_rng(0).standard_normal((2, *shape[1:])).astype(np.float32)
    qdq = quantize(model, calib, QuantConfig(), progress=False, input_shapes=shapes).qdq
    _, lowered, float_ops = lower(qdq.to_onnx(), 1)
    return (f"at w8a8, compile lowers: integer ops: {_counts(lowered) or 'none'}; "
            f"float fallback: {_counts(float_ops) or 'none'}")


def cmd_optimize(args: argparse.Namespace) -> int:
    from qcompiler import ir
    from qcompiler.driver import build_pipeline
    from qcompiler.passes import DumpAfterInstrument, PassContext, TimingInstrument, VerifyInstrument, load_pass

    names = None if args.passes is None else [n.strip() for n in args.passes.split(",") if n.strip()]
    user = [load_pass(spec)() for spec in args.user_passes]
    instruments = [] if args.no_verify else [VerifyInstrument()]
    timing = TimingInstrument()
    if args.time:
        instruments.append(timing)
    if args.dump_after:
        instruments.append(DumpAfterInstrument(args.dump_after, args.output.with_suffix("")))
    manager = build_pipeline(names, PassContext(instruments))
    manager.passes += user
    unknown_dumps = set(args.dump_after) - {p.display_name for p in manager.passes}
    if unknown_dumps:
        raise UsageError(f"--dump-after {sorted(unknown_dumps)}: not in the pipeline {manager.describe()}")

    model = ir.load(args.model)
    before = ir.ops_histogram(model.graph.nodes)
    reference = model.copy()
    result = manager(model)
    ir.save(result.model, args.output)
    after = ir.ops_histogram(result.model.graph.nodes)
    print(f"pipeline   {manager.describe()}")
    print(f"nodes      {sum(before.values())} -> {sum(after.values())}   ({_op_changes(before, after)})")
    print(f"wrote      {args.output}")
    print(f"check      {_equivalence(reference, result.model)}")
    if args.time:
        print(timing.table())
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    from qcompiler import files

    result, report = _quantize(args)
    out = files.prepare_output_dir(args.output_dir)
    _write_quantized(out, result, report)
    print(f"wrote {out / 'model.qdq.onnx'} and {out / 'report.html'}")
    return 0


def _quantize(args: argparse.Namespace):
    """Quantize (and evaluate) as the options say; the result and its report, nothing written."""
    import time

    from qcompiler import ir
    from qcompiler.data import ImagePreprocess, load_data
    from qcompiler.driver import constant_bytes, quantize
    from qcompiler.evaluate import evaluate, tensor_errors
    from qcompiler.quant.annotation import weight_values
    from qcompiler.quant.presets import load_config
    from qcompiler.report import ReportData

    start = time.perf_counter()
    config = load_config(args.config, args.preset, args.observer, args.override,
                         False if args.no_bias_correction else None)
    model = ir.load(args.model)
    progress = not args.no_progress
    result = quantize(model, args.calib, config, calib_count=args.calib_count, batch_size=args.batch_size,
                      preprocess=ImagePreprocess.parse(args.preprocess), progress=progress,
                      reconstruct=reconstruct_config(args), input_shapes=input_shapes(args, model))
    evaluation = None
    if args.eval:
        eval_data = load_data(args.eval, result.float_model, what="evaluation",
                              preprocess=ImagePreprocess.parse(args.preprocess))
        evaluation = evaluate(result.float_model, result.qdq, eval_data, progress=progress)
    tensors = tensor_errors(result.annotated, result.qdq, result.dequantized, result.calibration.head(64),
                            result.float_model)
    report = ReportData(
        model_path=str(args.model), preset=config.preset.name,
        observer=(config.activation_observer or config.preset.activation_observer) if config.preset.activation_bits
        else "none (weight-only preset: activations stay float)",
        calibration=str(args.calib), calibration_samples=result.calibration.count, evaluation=evaluation,
        evaluation_source=str(args.eval), tensors=tensors, float_bytes=constant_bytes(result.float_model),
        quant_bytes=constant_bytes(result.qdq), seconds=time.perf_counter() - start, weight_values=weight_values(result.annotated),
        reconstruction=result.reconstruction, reconstruction_setting=_describe_reconstruction(args),
        bias_correction=_describe_bias_correction(result, args), untied=result.untied)
    return result, report


def _describe_bias_correction(result, args: argparse.Namespace) -> str:
    if args.reconstruct:
        return ""  # reconstruction learns the rounding instead; its own row says so
    if not result.config.bias_correction:
        return "off"
    if not result.bias_shifts:
        return "no Conv/Gemm layer with quantized weights"
    return (f"{len(result.bias_shifts)} layers (mean shift of weight rounding folded into the biases; "
            f"largest change {max(result.bias_shifts.values()):.3g})")


def _describe_reconstruction(args: argparse.Namespace) -> str:
    config = reconstruct_config(args)
    if config is None:
        return ""
    extras = (", Fisher" if config.fisher else "") + (f", QDrop {config.qdrop}" if config.qdrop else "")
    return f"BRECQ {config.granularity}, {config.iters}+{config.act_iters} iterations per block{extras}"


def _write_quantized(out: Path, result, report) -> None:
    from qcompiler import files, ir
    from qcompiler.report import summary_table, write_html

    ir.save(result.qdq, out / "model.qdq.onnx")
    files.write_text_atomic(out / "report.html", write_html(report))
    print(summary_table(report))


def cmd_compile(args: argparse.Namespace) -> int:
    """Quantize (unless the model already is QDQ), build the integer library, check it, write all."""
    from qcompiler import files, ir
    from qcompiler.backends.tvm.targets import get_target
    from qcompiler.driver import compile_qdq, fix_shapes, write_library

    target = get_target(args.target)
    model = ir.load(args.model)
    already = any(n.op in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.nodes)
    result = report = None
    if already:
        if args.calib:
            log.warning("%s is already quantized (QDQ): --calib and the quantization options are ignored", args.model)
        qdq = model
    elif not args.calib:
        raise UsageError(f"{args.model} is a float model: give --calib DATA to quantize it first "
                         "(or pass an already quantized *.qdq.onnx)")
    else:
        result, report = _quantize(args)
        qdq = result.qdq
    print(f"building for {target.name} ({target.description}), batch {args.batch} ...", file=sys.stderr)
    qdq = fix_shapes(qdq, input_shapes(args, qdq) if already else None)
    library = compile_qdq(qdq, target, args.batch)
    out = files.prepare_output_dir(args.output_dir)
    if result is not None:
        _write_quantized(out, result, report)
    paths = write_library(library, qdq, out)
    print(f"integer ops: {_counts(library.lowered)}; float fallback: {_counts(library.float_ops) or 'none'}")
    print(f"kernels: {_counts(library.kernels) or 'generic only'}")
    print("build: " + ", ".join(f"{k} {v:.1f} s" for k, v in library.seconds.items()))
    if target.host and result is not None:
        _print_fidelity(qdq, out, result.calibration.head(min(64, result.calibration.count)))
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def _counts(counter) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counter.items()))


def _print_fidelity(qdq, out: Path, data) -> None:
    """The library against the QDQ model in onnxruntime on calibration samples, in output LSBs."""
    from qcompiler.fidelity import compare, reference_spread
    from qcompiler.runtime import load

    feeds, proto = dict(data.arrays), qdq.to_onnx()
    results = compare(proto, load(out), feeds)
    for fidelity in results:
        print(f"library vs QDQ model (onnxruntime): {fidelity.line()}")
    if any(f.max_lsb > 1.0 + 1e-4 for f in results):
        print(f"  for scale: onnxruntime's optimized and unoptimized runs of the same QDQ model differ by up to "
              f"{reference_spread(proto, feeds):.0f} LSB here (rounding near-ties grow through deep nets; "
              "docs/backend.md)")


def cmd_run(args: argparse.Namespace) -> int:
    from qcompiler.data import InputInfo, read_array_file
    from qcompiler.runtime import load, read_metadata

    target = read_metadata(args.library)["target"]["name"]
    if target.startswith("arm64"):
        from qcompiler.backends.tvm.qemu import QemuLibrary

        print(f"{args.library} is built for {target}: running it under qemu-aarch64 (correctness, not speed)",
              file=sys.stderr)
        library = QemuLibrary(args.library)
    else:
        library = load(args.library)
    infos = [InputInfo(name, np.dtype(spec["dtype"]), tuple(spec["shape"])) for name, spec in library.inputs.items()]
    feeds, _ = read_array_file(Path(args.input), infos)
    outputs = library.run(feeds)
    for name, value in outputs.items():
        line = f"{name}: {value.dtype}{list(value.shape)}"
        if value.ndim == 2:
            line += f", argmax of the first samples: {value.argmax(1)[:10].tolist()}"
        print(line)
    if args.output:
        _save_npz(args.output, outputs)
        print(f"wrote {args.output}")
    return 0


def _save_npz(path: Path, arrays: dict) -> None:
    import io

    from qcompiler import files

    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    files.write_bytes_atomic(path, buffer.getvalue())


def cmd_targets(args: argparse.Namespace) -> int:
    import json

    from qcompiler.backends.tvm.targets import TARGETS

    for spec in TARGETS.values():
        compiler = "host compiler" if spec.host else (
            f"{spec.cross_compiler} ({'found' if spec.compiler_available() else 'missing: apt-get install ' + spec.apt_package})")
        print(f"{spec.name:<14} {spec.description}")
        print(f"{'':<14} tvm target: {json.dumps(spec.llvm)}")
        print(f"{'':<14} linker: {compiler}; schedules: {', '.join(spec.schedules)}")
    return 0


def cmd_passes(args: argparse.Namespace) -> int:
    from qcompiler.passes import DEFAULT_PIPELINE, registered_passes

    for name, cls in registered_passes().items():
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        print(f"{name:<20} {doc}{'  [default]' if name in DEFAULT_PIPELINE else ''}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The main job on the bundled ResNet-8: inspect, optimize, quantize (W8A8), evaluate."""
    from qcompiler import models

    model_path, data_path = models.path(models.DEFAULT_MODEL), models.path(models.FASHION_SUBSET)
    out = args.output_dir
    out.mkdir(parents=True, exist_ok=True)
    # Calibrate on the first 150 bundled test images, evaluate on the other 150: no overlap.
    data = np.load(data_path, allow_pickle=False)
    calib, held_out = out / "calibration.npz", out / "evaluation.npz"
    np.savez(calib, input=data["input"][:150])
    np.savez(held_out, input=data["input"][150:], labels=data["labels"][150:])
    library = out / "library"
    progress = [] if sys.stderr.isatty() else ["--no-progress"]
    name = model_path.name
    for shown, command, run in (
            (f"inspect {name}", ["inspect", model_path], cmd_inspect),
            (f"optimize {name} -o {out / 'model.opt.onnx'}", ["optimize", model_path, "-o", out / "model.opt.onnx"],
             cmd_optimize),
            (f"quantize {name} --calib {calib} --eval {held_out} --preset w8a8 -o {out}",
             ["quantize", model_path, "--calib", calib, "--eval", held_out, "--preset", "w8a8", "-o", out, *progress],
             cmd_quantize),
            (f"compile {out / 'model.qdq.onnx'} --target x86 -o {library}",
             ["compile", out / "model.qdq.onnx", "--target", "x86", "-o", library], cmd_compile)):
        print(f"{'' if run is cmd_inspect else chr(10)}== qcompiler {shown}")
        run(build_parser().parse_args([str(c) for c in command]))  # the parser's defaults, as a user gets them
    print(f"\n== qcompiler run {library} --input {held_out}")
    return _demo_run(library, out / "model.qdq.onnx", data["input"][150:], data["labels"][150:])


def _demo_run(library_dir: Path, qdq_path: Path, images: np.ndarray, labels: np.ndarray) -> int:
    """Run the compiled library on the held-out images: accuracy, and agreement with the QDQ model."""
    from qcompiler import ir
    from qcompiler.fidelity import compare
    from qcompiler.runtime import load

    library = load(library_dir)
    logits = library.run({"input": images})["logits"]
    print(f"integer library on {len(images)} held-out images: top-1 accuracy {np.mean(logits.argmax(1) == labels):.4f}")
    for fidelity in compare(ir.load(qdq_path).to_onnx(), library, {"input": images}):
        print(f"library vs QDQ model (onnxruntime): {fidelity.line()}")
    return 0


def _op_changes(before: dict[str, int], after: dict[str, int]) -> str:
    changes = [f"{op} {before.get(op, 0)}->{after.get(op, 0)}" for op in sorted(set(before) | set(after))
               if before.get(op, 0) != after.get(op, 0)]
    return ", ".join(changes) or "no change"


def _equivalence(reference, optimized) -> str:
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


COMMANDS = {"inspect": cmd_inspect, "optimize": cmd_optimize, "quantize": cmd_quantize, "passes": cmd_passes,
            "demo": cmd_demo, "compile": cmd_compile, "run": cmd_run, "targets": cmd_targets}

if __name__ == "__main__":
    sys.exit(main())
