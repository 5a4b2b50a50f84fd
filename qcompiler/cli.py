"""The `qcompiler` command line: it parses options, calls the driver (qcompiler.driver,
qcompiler.compiler) and prints what comes back; no pipeline logic lives here.

Exit codes: 0 ok, 2 usage, 3 invalid or unsafe model, 4 unsupported model, 5 calibration data,
6 output, 7 remote device, 70 internal error, 130 interrupted. User errors print one line,
never a traceback (`--debug` shows one)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import numpy as np

from qcompiler import supervise
from qcompiler.cli_options import bit_budget, build_parser, input_shapes, reconstruct_config
from qcompiler.cli_train import train_config
from qcompiler.cli_analyze import cmd_analyze
from qcompiler.cli_tune import cmd_rpc, cmd_tune
from qcompiler.errors import QCompilerError, UsageError

log = logging.getLogger("qcompiler")

def main(argv: list[str] | None = None) -> int:
    """Run one command; its exit code (qcompiler.__main__ runs this in a supervised child)."""
    with supervise.interrupts_noted():
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])  # known before parsing succeeds
    try:
        args = parser.parse_args(argv)
        logging.basicConfig(level=(logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)],
                            format="%(levelname)s %(name)s: %(message)s")
        if args.command is None:
            parser.print_help()
            return 2
        code = COMMANDS[args.command](args)
        sys.stdout.flush()   # here, where a closed pipe is caught below, not at interpreter exit
        return code
    except KeyboardInterrupt:
        return _interrupted()
    except BrokenPipeError:   # the reader stopped (`qcompiler targets | head`): its choice, not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())   # so that the exit flush is quiet
        return 0
    except QCompilerError as exc:
        if supervise.interrupted():
            return _interrupted()
        if debug:
            raise
        print(f"qcompiler: error: {escape(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except Exception as exc:  # a bug of ours: say so, in one line, with how to see more
        if supervise.interrupted():   # TVM's callbacks turn a KeyboardInterrupt into a RuntimeError
            return _interrupted()
        if debug:
            raise
        print(f"qcompiler: internal error: {type(exc).__name__}: {escape(str(exc))} (rerun with --debug for a traceback "
              "and report it)", file=sys.stderr)
        return 70


def _interrupted() -> int:
    print(supervise.INTERRUPTED_LINE, file=sys.stderr)
    return supervise.INTERRUPT_EXIT_CODE


def escape(text: str) -> str:
    """One line: control characters in names (a node called "a\\nb") are shown escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def cmd_inspect(args: argparse.Namespace) -> int:
    from qcompiler.compiler import inspect
    from qcompiler.summary import format_summary

    found = inspect(args.model, input_shapes(args), args.granularity if args.blocks else None)
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
    from qcompiler.files import OutputSet
    from qcompiler.passes import load_pass

    names = None if args.passes is None else [n.strip() for n in args.passes.split(",") if n.strip()]
    output = args.output
    outputs = OutputSet(output.parent, [output.name, f"{output.name}.data", *_dump_names(args, output.stem)],
                        force=args.force, inputs=[args.model, *_user_pass_files(args)])
    with outputs.staging() as stage:   # refuses existing outputs first (OutputSet.check)
        context, timing = _context(args, stage / output.stem, verify=not args.no_verify)
        done = optimize(args.model, names, context, extra=[load_pass(spec)() for spec in args.user_passes])
        ir.save(done.model, stage / output.name)
    print(f"pipeline   {done.pipeline}")
    print(f"nodes      {sum(done.ops_before.values())} -> {sum(done.ops_after.values())}   ({done.op_changes()})")
    print(f"wrote      {output}")
    print(f"check      {done.check}")
    if timing is not None:
        print(timing.table())
    return 0


def _dump_names(args: argparse.Namespace, stem: str) -> list[str]:
    """The files --dump-after writes (DumpAfterInstrument's names)."""
    return [f"{stem}.after-{name}.onnx" for name in args.dump_after]


def _user_pass_files(args: argparse.Namespace) -> list[str]:
    return [spec.rpartition(":")[0] for spec in getattr(args, "user_passes", []) if ":" in spec]


def _inputs(args: argparse.Namespace) -> list:
    """The files a quantize/compile command reads (an output must never be one of them)."""
    return [args.model, args.calib, args.eval, args.config]


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
    from qcompiler.driver import QUANTIZE_OUTPUTS
    from qcompiler.files import OutputSet
    from qcompiler.report import summary_table

    outputs = OutputSet(args.output_dir, [*QUANTIZE_OUTPUTS, *_dump_names(args, "model")], force=args.force,
                        inputs=_inputs(args))
    outputs.check()
    with outputs.staging() as stage:
        run, evaluation, timing = _quantize(args, stage / "model")
        report = run.report(evaluation, str(args.eval))
        paths = [outputs.final(p) for p in run.save(stage, report)]
    print(summary_table(report))
    if timing is not None:
        print(timing.table())
    print(f"wrote {paths[0]} and {paths[1]}")
    return 0


def _quantize(args: argparse.Namespace, dump_prefix: Path):
    """Quantize (and evaluate, with --eval) as the options say: the run, its evaluation, the timer."""
    from qcompiler import driver
    from qcompiler.quant.presets import load_config

    config = load_config(args.config, args.preset, args.observer, args.override,
                         False if args.no_bias_correction else None, False if args.no_wide_activations else None,
                         args.widen_below)
    context, timing = _context(args, dump_prefix)
    preprocess, progress = args.preprocess, not args.no_progress
    train = train_config(args)
    run = driver.quantize(args.model, args.calib, config, calib_count=args.calib_count,
                          batch_size=None if train else args.batch_size, preprocess=preprocess, progress=progress,
                          reconstruct=reconstruct_config(args), input_shapes=input_shapes(args), context=context,
                          train=train, train_data=args.train_data, train_count=args.train_count,
                          held_out=args.eval if train else None, bits=bit_budget(args))
    evaluation = driver.evaluate(run, args.eval, preprocess=preprocess, progress=progress) if args.eval else None
    return run, evaluation, timing


def cmd_compile(args: argparse.Namespace) -> int:
    """Quantize (unless the model already is QDQ), build the integer library, check it, write all."""
    from qcompiler import ir
    from qcompiler.backends.tvm.targets import get_target
    from qcompiler.compiler import LIBRARY_OUTPUTS, refuse_what_the_backend_cannot_lower
    from qcompiler.files import OutputSet

    target = get_target(args.target)
    outputs = OutputSet(args.output_dir, [*LIBRARY_OUTPUTS, *_dump_names(args, "model")], force=args.force,
                        inputs=_inputs(args))
    outputs.check()
    model = ir.load(args.model)
    already = any(n.op in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.nodes)
    if already and args.calib:
        log.warning("%s is already quantized (QDQ): --calib and the quantization options are ignored", args.model)
    elif not already and not args.calib:
        raise UsageError(f"{args.model} is a float model: give --calib DATA to quantize it first "
                         "(or pass an already quantized *.qdq.onnx)")
    if not already:
        refuse_what_the_backend_cannot_lower(model, input_shapes(args))   # exit 4 before calibrating
    with outputs.staging() as stage:
        built, timing = _compile(args, target, None if already else stage / "model", model, stage)
    _print_compiled(args, built, timing, [outputs.final(p) for p in built.paths])
    return 0


def _compile(args: argparse.Namespace, target, dump_prefix: Path | None, model, stage: Path):
    """Quantize when `dump_prefix` is given (a float model), then build and write into `stage`."""
    from qcompiler.compiler import compile

    run = evaluation = timing = None
    if dump_prefix is not None:
        run, evaluation, timing = _quantize(args, dump_prefix)
    print(f"building for {target.name} ({target.description}), batch {args.batch} ...", file=sys.stderr)
    built = compile(run or model, target=target, batch=args.batch, output_dir=stage, allow_float=args.allow_float,
                    tuning_db=getattr(args, "tuning_db", None),
                    input_shapes=None if run else input_shapes(args), evaluation=evaluation,
                    evaluation_source=str(args.eval))
    return built, timing


def _print_compiled(args: argparse.Namespace, built, timing, paths: list[Path]) -> None:
    from qcompiler.compiler import counts
    from qcompiler.report import summary_table

    if built.report is not None:
        print(summary_table(built.report))
    library = built.library
    print(built.split())
    print(f"kernels: {counts(library.kernels) or 'generic only'}")
    if getattr(args, "tuning_db", None) is not None:
        _print_tuning(args.tuning_db, library.tuned_kernels)
    print("build: " + ", ".join(f"{k} {v:.1f} s" for k, v in library.seconds.items()))
    where = f"; the library under {built.checked_by}" if built.checked_by else ""
    for fidelity in built.fidelity:
        print(f"library vs QDQ model (onnxruntime{where}): {fidelity.line()}")
    if built.unchecked:
        print(f"library vs QDQ model: {built.unchecked}")
    if built.latency is not None:
        _print_latency(built.latency, built.quantized.mixed)
    if built.reference_spread is not None:
        print(f"  for scale: onnxruntime's optimized and unoptimized runs of the same QDQ model differ by up to "
              f"{built.reference_spread:.0f} LSB here (rounding near-ties grow through deep nets; docs/backend.md)")
    if timing is not None:
        print(timing.table())
    if args.time:
        print(f"{'backend pass':<26} seconds")
        print("\n".join(f"{name:<26} {seconds:>7.3f}" for name, seconds in library.stages.items()))
    print("wrote " + ", ".join(str(p) for p in paths))


def _print_latency(measured, mixed) -> None:
    budget, predicted = mixed.budget.max_latency, mixed.assignment.latency
    print(f"latency: {measured.line()}; predicted {predicted:.3f} ms, budget {budget:.3f} ms")
    if measured.median_ms > budget:
        log.warning("the library's median %.3f ms is over the --max-latency budget of %.3f ms (%+.0f%%): the "
                    "prediction adds kernels timed alone to the rest of a reference library (%s)",
                    measured.median_ms, budget, 100 * (measured.median_ms / budget - 1), mixed.whole.line())


def _print_tuning(db: Path, tuned: list) -> None:
    if tuned:
        print(f"tuning: {len(tuned)} kernel(s) took their tiling from {db}")
    else:
        log.warning("%s has no record for any kernel of this build: it was tuned for another model, batch or "
                    "quantization (tune this one: qcompiler tune OUT_DIR)", db)


def cmd_run(args: argparse.Namespace) -> int:
    from qcompiler.backends.tvm.runtime import load_for_host
    from qcompiler.data import InputInfo, read_array_file

    if args.output:
        _npz_outputs(args).check()
    with supervise.stage(f"loading the library {args.library}"):
        library = load_for_host(args.library)
    emulated = not hasattr(library, "time")
    if emulated:
        print(f"{args.library} is built for {library.meta['target']['name']}: running it under "
              f"{library.meta['target'].get('runner') or 'qemu-aarch64'} (correctness, not speed)", file=sys.stderr)
        if args.repeat or args.profile:
            raise UsageError("--repeat and --profile time the library: run it on the device it is built for "
                             "(under qemu the times say nothing of the device's)")
    infos = [InputInfo(name, np.dtype(spec["dtype"]), tuple(spec["shape"])) for name, spec in library.inputs.items()]
    feeds, labels = read_array_file(Path(args.input), infos)
    with supervise.stage(f"the library {args.library}"):
        outputs = library.run(feeds)
    for name, value in outputs.items():
        line = f"{name}: {value.dtype}{list(value.shape)}"
        if value.ndim == 2:
            line += f", argmax of the first samples: {value.argmax(1)[:10].tolist()}"
        print(line)
    if emulated:
        _print_fidelity(Path(args.library), outputs, feeds)
    first = next(iter(outputs.values()))
    if labels is not None and first.ndim == 2:
        print(f"top-1 accuracy: {np.mean(first.argmax(1) == labels):.4f} on {len(labels)} labelled samples")
    if args.repeat:
        print(f"time per batch of {library.batch}: {library.time(feeds, repeat=args.repeat).line()}")
    if args.profile:
        print(_profile_table(library.profile(feeds)))
    if args.output:
        _save_npz(args, outputs)
        print(f"wrote {args.output}")
    return 0


def _print_fidelity(folder: Path, outputs: dict, feeds: dict) -> None:
    """An emulated library's outputs against the folder's QDQ model in onnxruntime, in output LSBs."""
    import onnx

    from qcompiler.fidelity import compare_outputs

    qdq = folder / "model.qdq.onnx"
    if not qdq.is_file():
        return
    for f in compare_outputs(onnx.load(str(qdq)), outputs, feeds):
        unit = "LSB" if f.quantized else "of the largest magnitude"
        print(f"{f.output}: against model.qdq.onnx (onnxruntime) at most {f.max_lsb:.2f} {unit} apart, "
              f"{100 * f.equal_share:.1f}% equal, {f.samples} samples")


def _profile_table(rows, top: int = 25) -> str:
    """The kernels slowest first (the top ones), then the VM's own share, then the whole run."""
    from qcompiler.backends.tvm.runtime import VM_ROW

    total = sum(ms for _, _, ms in rows) or 1.0
    kernels, vm = [r for r in rows if r[0] != VM_ROW], [r for r in rows if r[0] == VM_ROW]

    def line(name, calls, ms):
        return f"{name[:48]:<48} {calls:>5} {ms:>8.3f} {100 * ms / total:>5.1f}%"

    lines = [f"{'kernel (C++ timer, warm caches)':<48} {'calls':>5} {'ms/run':>8} {'share':>6}"]
    lines += [line(*row) for row in kernels[:top]]
    if len(kernels) > top:
        lines.append(f"... {len(kernels) - top} more kernels, {sum(ms for _, _, ms in kernels[top:]):.3f} ms")
    return "\n".join(lines + [line(*row) for row in vm] + [f"{'total (a run)':<48} {'':>5} {total:>8.3f}"])


def _npz_outputs(args: argparse.Namespace):
    from qcompiler.files import OutputSet

    path = args.output
    return OutputSet(path.parent, [path.name], force=args.force,
                     inputs=[args.input, args.library / "model.so", args.library / "model.json"])


def _save_npz(args: argparse.Namespace, arrays: dict) -> None:
    import io

    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    with _npz_outputs(args).staging() as stage:
        (stage / args.output.name).write_bytes(buffer.getvalue())


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

    return run_demo(args.output_dir, args.force)


COMMANDS = {"analyze": cmd_analyze, "inspect": cmd_inspect, "optimize": cmd_optimize, "quantize": cmd_quantize, "passes": cmd_passes,
            "demo": cmd_demo, "compile": cmd_compile, "run": cmd_run, "targets": cmd_targets, "tune": cmd_tune,
            "rpc": cmd_rpc}

if __name__ == "__main__":
    sys.exit(supervise.run_supervised(main))
