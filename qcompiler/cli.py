"""The `qcompiler` command line: it parses options, calls the driver (qcompiler.driver,
qcompiler.compiler) and prints what comes back; no pipeline logic lives here.

Exit codes: 0 ok, 2 usage, 3 invalid or unsafe model, 4 unsupported model, 5 calibration data,
6 output, 7 remote device, 70 internal error, 130 interrupted. User errors print one line,
never a traceback (`--debug` shows one)."""

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
OBSERVER_NAMES = ("minmax", "ema", "percentile", "lp", "kl")


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
    _pass_options(p)
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
    p.add_argument("--target", default="native", help="a named target (native: this machine's CPU; x86-64-v3, "
                   "x86-64-v4, x86-avx512-vnni, arm64, arm64-dotprod, arm64-i8mm; `qcompiler targets` lists them) or "
                   "a TVM target string such as 'llvm -mcpu=znver3' (default: native)")
    p.add_argument("--batch", type=int, default=1, help="the batch size the library is built for (default 1)")
    p.add_argument("-o", "--output-dir", type=Path, required=True,
                   help="writes model.so, model.json, model.qdq.onnx (and report.html when it quantized) here")
    _quantize_options(p)

    p = sub.add_parser("run", help="run a compiled library on the host")
    p.add_argument("library", type=Path, help="the folder `compile` wrote")
    p.add_argument("--input", required=True, help=".npz with arrays named after the inputs (samples first), "
                   "or .npy for a one-input model")
    p.add_argument("-o", "--output", type=Path, help="write the outputs to this .npz")
    p.add_argument("--repeat", type=int, default=0, metavar="N",
                   help="also time N runs of one batch: median, p10, p90 (host libraries only)")
    p.add_argument("--profile", action="store_true", help="also time each kernel (10 runs), slowest first")

    sub.add_parser("targets", help="list the compilation targets")
    _more_commands(sub)
    return parser


def _pass_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--time", action="store_true", help="print the time each pass took")
    p.add_argument("--dump-after", action="append", default=[], metavar="NAME",
                   help="also write the model after pass NAME as OUTPUT.after-NAME.onnx (repeatable; "
                   "`qcompiler passes` names them)")


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


def _shapes(args: argparse.Namespace) -> dict[str, tuple[int, ...]] | None:
    """--input-shape as a dict (the key "" for a nameless one, which names a one-input model's input)."""
    return dict(getattr(args, "input_shape", [])) or None


def _quantize_options(p: argparse.ArgumentParser) -> None:
    _input_shape_option(p)
    _pass_options(p)
    p.add_argument("--preset", help=f"quantization scheme (default w8a8): {', '.join(PRESET_NAMES)}")
    p.add_argument("--observer", help=f"activation range observer: {', '.join(OBSERVER_NAMES)} (default: the "
                   "preset's, lp: the clipping range that minimizes the L2.4 error; 'mse', its old name, is accepted)")
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
    return ReconstructConfig(granularity=args.granularity, iters=args.iters, act_iters=args.act_iters, fisher=args.fisher,
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
    from qcompiler.compiler import inspect
    from qcompiler.summary import format_summary

    found = inspect(args.model, _shapes(args), args.granularity if args.blocks else None)
    print(format_summary(found.summary, max_layers=10**9 if args.all else 40))
    if found.split:
        print(found.split)
    if args.blocks:
        print(f"\nblocks ({args.granularity} granularity, after canonicalize + fold-batchnorm + fold-scale): "
              f"{len(found.blocks)}")
        for block in found.blocks:
            print("  " + block.describe())
    return 0


def cmd_optimize(args: argparse.Namespace) -> int:
    from qcompiler import ir
    from qcompiler.compiler import optimize
    from qcompiler.passes import load_pass

    names = None if args.passes is None else [n.strip() for n in args.passes.split(",") if n.strip()]
    context, timing = _context(args, args.output.with_suffix(""), verify=not args.no_verify)
    done = optimize(args.model, names, context, extra=[load_pass(spec)() for spec in args.user_passes])
    ir.save(done.model, args.output)
    print(f"pipeline   {done.pipeline}")
    print(f"nodes      {sum(done.ops_before.values())} -> {sum(done.ops_after.values())}   ({done.op_changes()})")
    print(f"wrote      {args.output}")
    print(f"check      {done.check}")
    if timing is not None:
        print(timing.table())
    return 0


def _context(args: argparse.Namespace, dump_prefix: Path, verify: bool = False):
    """The PassContext that --time, --dump-after (and optimize's verification) ask for, and the timer."""
    from qcompiler.pass_infra import DumpAfterInstrument, PassContext, TimingInstrument, VerifyInstrument

    instruments = [VerifyInstrument()] if verify else []
    timing = TimingInstrument() if args.time else None
    instruments += [timing] if timing else []
    if args.dump_after:
        instruments.append(DumpAfterInstrument(args.dump_after, dump_prefix))
    return PassContext(instruments), timing


def cmd_quantize(args: argparse.Namespace) -> int:
    from qcompiler.report import summary_table

    run, evaluation, timing = _quantize(args, args.output_dir / "model")
    report = run.report(evaluation, str(args.eval))
    paths = run.save(args.output_dir, report)
    print(summary_table(report))
    if timing is not None:
        print(timing.table())
    print(f"wrote {paths[0]} and {paths[1]}")
    return 0


def _quantize(args: argparse.Namespace, dump_prefix: Path):
    """Quantize (and evaluate, with --eval) as the options say: the run, its evaluation, the timer."""
    from qcompiler import driver
    from qcompiler.data import ImagePreprocess
    from qcompiler.quant.presets import load_config

    config = load_config(args.config, args.preset, args.observer, args.override,
                         False if args.no_bias_correction else None)
    context, timing = _context(args, dump_prefix)
    preprocess, progress = ImagePreprocess.parse(args.preprocess), not args.no_progress
    run = driver.quantize(args.model, args.calib, config, calib_count=args.calib_count, batch_size=args.batch_size,
                          preprocess=preprocess, progress=progress, reconstruct=reconstruct_config(args),
                          input_shapes=_shapes(args), context=context)
    evaluation = driver.evaluate(run, args.eval, preprocess=preprocess, progress=progress) if args.eval else None
    return run, evaluation, timing


def cmd_compile(args: argparse.Namespace) -> int:
    """Quantize (unless the model already is QDQ), build the integer library, check it, write all."""
    from qcompiler import ir
    from qcompiler.backends.tvm.targets import get_target
    from qcompiler.compiler import compile, counts
    from qcompiler.report import summary_table

    target = get_target(args.target)
    model = ir.load(args.model)
    already = any(n.op in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.nodes)
    run = evaluation = timing = None
    if already and args.calib:
        log.warning("%s is already quantized (QDQ): --calib and the quantization options are ignored", args.model)
    elif not already and not args.calib:
        raise UsageError(f"{args.model} is a float model: give --calib DATA to quantize it first "
                         "(or pass an already quantized *.qdq.onnx)")
    elif not already:
        run, evaluation, timing = _quantize(args, args.output_dir / "model")
    print(f"building for {target.name} ({target.description}), batch {args.batch} ...", file=sys.stderr)
    built = compile(run or model, target=target, batch=args.batch, output_dir=args.output_dir,
                    input_shapes=None if run else _shapes(args), evaluation=evaluation, evaluation_source=str(args.eval))
    if built.report is not None:
        print(summary_table(built.report))
    library = built.library
    print(built.split())
    print(f"kernels: {counts(library.kernels) or 'generic only'}")
    print("build: " + ", ".join(f"{k} {v:.1f} s" for k, v in library.seconds.items()))
    for fidelity in built.fidelity:
        print(f"library vs QDQ model (onnxruntime): {fidelity.line()}")
    if built.reference_spread is not None:
        print(f"  for scale: onnxruntime's optimized and unoptimized runs of the same QDQ model differ by up to "
              f"{built.reference_spread:.0f} LSB here (rounding near-ties grow through deep nets; docs/backend.md)")
    if timing is not None:
        print(timing.table())
    if args.time:
        print("backend pass            seconds")
        print("\n".join(f"{name:<22} {seconds:>8.3f}" for name, seconds in library.stages.items()))
    print("wrote " + ", ".join(str(p) for p in built.paths))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from qcompiler.backends.tvm.runtime import load_for_host
    from qcompiler.data import InputInfo, read_array_file

    library = load_for_host(args.library)
    emulated = not hasattr(library, "time")
    if emulated:
        print(f"{args.library} is built for {library.meta['target']['name']}: running it under qemu-aarch64 "
              "(correctness, not speed)", file=sys.stderr)
        if args.repeat or args.profile:
            raise UsageError("--repeat and --profile time the library: run it on the device it is built for "
                             "(under qemu the times say nothing of the device's)")
    infos = [InputInfo(name, np.dtype(spec["dtype"]), tuple(spec["shape"])) for name, spec in library.inputs.items()]
    feeds, labels = read_array_file(Path(args.input), infos)
    outputs = library.run(feeds)
    for name, value in outputs.items():
        line = f"{name}: {value.dtype}{list(value.shape)}"
        if value.ndim == 2:
            line += f", argmax of the first samples: {value.argmax(1)[:10].tolist()}"
        print(line)
    first = next(iter(outputs.values()))
    if labels is not None and first.ndim == 2:
        print(f"top-1 accuracy: {np.mean(first.argmax(1) == labels):.4f} on {len(labels)} labelled samples")
    if args.repeat:
        print(f"time per batch of {library.batch}: {library.time(feeds, repeat=args.repeat).line()}")
    if args.profile:
        print(_profile_table(library.profile(feeds)))
    if args.output:
        _save_npz(args.output, outputs)
        print(f"wrote {args.output}")
    return 0


def _profile_table(rows, top: int = 25) -> str:
    total = sum(ms for _, _, ms in rows) or 1.0
    lines = [f"{'kernel':<48} {'calls':>5} {'ms/run':>8} {'share':>6}"]
    lines += [f"{name[:48]:<48} {calls:>5} {ms:>8.3f} {100 * ms / total:>5.1f}%" for name, calls, ms in rows[:top]]
    if len(rows) > top:
        lines.append(f"... {len(rows) - top} more kernels, {sum(ms for _, _, ms in rows[top:]):.3f} ms")
    return "\n".join(lines + [f"{'total (kernels)':<48} {'':>5} {total:>8.3f}"])


def _save_npz(path: Path, arrays: dict) -> None:
    import io

    from qcompiler import files

    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    files.write_bytes_atomic(path, buffer.getvalue())


def cmd_targets(args: argparse.Namespace) -> int:
    from qcompiler.backends.tvm.targets import TARGETS, describe_target

    for spec in TARGETS.values():
        print(describe_target(spec))
    return 0


def cmd_passes(args: argparse.Namespace) -> int:
    from qcompiler.passes import DEFAULT_PIPELINE, registered_passes

    for name, cls in registered_passes().items():
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        print(f"{name:<20} {doc}{'  [default]' if name in DEFAULT_PIPELINE else ''}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from qcompiler.demo import run_demo

    return run_demo(args.output_dir)


COMMANDS = {"inspect": cmd_inspect, "optimize": cmd_optimize, "quantize": cmd_quantize, "passes": cmd_passes,
            "demo": cmd_demo, "compile": cmd_compile, "run": cmd_run, "targets": cmd_targets}

if __name__ == "__main__":
    sys.exit(main())
