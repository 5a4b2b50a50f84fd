"""The command line's options: the parser of every `qcompiler` command, and the option values
turned into what the driver takes (input shapes, BRECQ's settings). qcompiler.cli runs them."""

from __future__ import annotations

import argparse
import functools
from pathlib import Path

from qcompiler import __version__
from qcompiler.blocks import AUTO_CROP, GRANULARITIES, LEARNED_BIAS_LR, HOLDOUT_METRICS, MAX_HOLDOUT, ReconstructConfig
from qcompiler.errors import UsageError

# Names for --help only (the modules that own them are imported when a command runs).
PRESET_NAMES = ("w8a8", "w8a8-per-tensor", "w4a8", "w4a4", "w2a4", "w4", "w2")
OBSERVER_NAMES = ("minmax", "ema", "percentile", "lp", "kl")


class _Parser(argparse.ArgumentParser):
    """argparse that raises UsageError (exit 2, one line) instead of printing and exiting itself."""

    def error(self, message: str) -> None:
        raise UsageError(f"{self.prog}: {message} (see --help)")


EXIT_CODES = """exit codes: 0 ok, 2 usage, 3 invalid or unsafe model, 4 unsupported model,
5 calibration data, 6 output, 7 remote device, 70 internal error, 71 crashed in native code,
130 interrupted"""


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _bounded_int(text, 1)


def count_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _bounded_int(text, 0)


def _bounded_int(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"{value}: must be {'positive' if low else '0 or more'}")
    return value


def _force_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--force", action="store_true", help="replace outputs that exist (without it they are refused, "
                   "exit 6); outputs of an earlier run that this one does not write are removed")


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
    _force_option(p)
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
    p.add_argument("--target", default="native", help="with --bits auto: the target whose packed weight sizes and "
                   "kernel times the search uses (default: native; `compile` takes its own --target)")
    _force_option(p)
    _quantize_options(p)

    p = sub.add_parser("compile", help="quantize (unless already QDQ) and build an integer library for a target")
    p.add_argument("model", type=Path, help="a float .onnx model, or an already quantized *.qdq.onnx")
    p.add_argument("--calib", help="calibration data as for `quantize` (not needed for a QDQ model)")
    p.add_argument("--target", default="native", help="a named target (native: this machine's CPU; x86-64-v3, "
                   "x86-64-v4, x86-avx512-vnni, arm64, arm64-dotprod, arm64-i8mm, hexagon-v68, hexagon-v73; "
                   "`qcompiler targets` lists them) or "
                   "a TVM target string such as 'llvm -mcpu=znver3' (default: native)")
    p.add_argument("--batch", type=positive_int, default=1, help="the batch size the library is built for (default 1)")
    p.add_argument("--allow-float", action="store_true", help="Hexagon: accept ops that would run in scalar float "
                   "on the DSP (refused by default, exit 4)")
    p.add_argument("--tuning-db", type=Path, metavar="PATH", help="the convolution tilings `qcompiler tune` measured "
                   "for this model and target")
    p.add_argument("-o", "--output-dir", type=Path, required=True,
                   help="writes model.so, model.json, model.qdq.onnx (and report.html when it quantized) here")
    _force_option(p)
    _quantize_options(p)

    p = sub.add_parser("run", help="run a compiled library on the host")
    p.add_argument("library", type=Path, help="the folder `compile` wrote")
    p.add_argument("--input", required=True, help=".npz with arrays named after the inputs (samples first), "
                   "or .npy for a one-input model")
    p.add_argument("-o", "--output", type=Path, help="write the outputs to this .npz")
    _force_option(p)
    p.add_argument("--repeat", type=count_int, default=0, metavar="N",
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


def probability(text: str) -> float:
    """argparse type of --qdrop: a number in [0, 1)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"{value}: a probability in [0, 1)")
    return value


def holdout_share(text: str) -> float:
    """argparse type of --holdout: a share in (0, MAX_HOLDOUT]."""
    value = probability(text)
    if not 0.0 < value <= MAX_HOLDOUT:
        raise argparse.ArgumentTypeError(f"{value}: a share above 0 and at most {MAX_HOLDOUT}")
    return value


def crop_option(text: str) -> int | str:
    """argparse type of --crop: auto, off or a positive number of output positions."""
    if text in ("auto", "off"):
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected auto, off or a positive whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value}: must be positive (or auto, off)")
    return value


def preprocess(text: str):
    """argparse type of --preprocess: parsed (and so checked) before anything runs."""
    from qcompiler.data import ImagePreprocess

    try:
        return ImagePreprocess.parse(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix(f"--preprocess {text!r}: ")) from None


def _input_shape_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input-shape", action="append", default=[], type=input_shape, metavar="NAME=D,D,...",
                   help="fix an input's shape (repeatable); needed where a model has dynamic dimensions beyond the "
                   "batch and no calibration data shows them (default: the calibration data's shape)")


def input_shapes(args: argparse.Namespace) -> dict[str, tuple[int, ...]] | None:
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
                   '[{"pattern": ..., "wbits": 8}], "keep_edge_layers_8bit": true, "bias_correction": true, '
                   '"widen_activations": true}')
    p.add_argument("--eval", help="held-out data like --calib, optionally with a 'labels' array: accuracy, "
                   "agreement, KL and SQNR against the float model")
    p.add_argument("--calib-count", type=positive_int, help="use at most this many calibration samples")
    p.add_argument("--preprocess", default="none", type=preprocess, help="for image folders: 'imagenet', or "
                   "'resize=256,crop=224,mean=0.485/0.456/0.406,std=0.229/0.224/0.225,layout=NCHW,color=RGB'")
    p.add_argument("--batch-size", type=positive_int, help="calibration batch size (default: what fits 256 MiB of "
                   "activations); with --train, the training batch (default 64)")
    p.add_argument("--no-bias-correction", action="store_true", help="keep the biases as trained (by default the mean "
                   "output shift that weight rounding causes is folded into them; after --reconstruct, only if that raises "
                   "the output's SQNR on the calibration data)")
    p.add_argument("--no-wide-activations", action="store_true", help="keep every 8-bit activation at 8 bits (by "
                   "default one whose typical values 8 bits would lose, because a few far-out values set its range, "
                   "is quantized at 16 bits, and the summary says so)")
    p.add_argument("--widen-below", type=float, metavar="DB", help="quantize at 16 bits the activations whose typical "
                   "values keep less than DB dB SQNR at 8 bits (default 12: only those whose signal is lost; 20 also "
                   "widens degraded ones, slower where their readers lose the 8-bit kernels)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    _reconstruct_options(p)
    _bits_options(p)
    from qcompiler.cli_train import train_options  # after this module's names exist (it imports positive_int)

    train_options(p)


def _reconstruct_options(p: argparse.ArgumentParser) -> None:
    defaults = ReconstructConfig()
    g = p.add_argument_group("reconstruction (BRECQ; docs/brecq.md)")
    g.add_argument("--reconstruct", choices=["brecq"], help="learn weight rounding (AdaRound) and activation step "
                   "sizes block by block against the float model")
    g.add_argument("--granularity", choices=GRANULARITIES, default=defaults.granularity,
                   help="what is reconstructed together (default: %(default)s)")
    g.add_argument("--iters", type=count_int, default=defaults.iters,
                   help="weight-rounding iterations per block (default: %(default)s, the authors')")
    g.add_argument("--act-iters", type=count_int, help="activation step-size iterations per block "
                   f"(default: a quarter of --iters, the authors' ratio {defaults.act_iters}/{defaults.iters})")
    g.add_argument("--fisher", action="store_true", help="weight the block output error by the Fisher diagonal "
                   "(squared gradients of the KL between quantized and float network outputs)")
    g.add_argument("--qdrop", type=probability, default=0.0, metavar="P", help="QDrop: learn rounding and step sizes "
                   "together, keeping each activation in float with probability P (the authors use 0.5)")
    g.add_argument("--learn-bias", action="store_true", help="also learn the quantized layers' biases, block by "
                   "block, instead of correcting them after (helps short runs and depthwise nets whose calibration "
                   "data is like their inputs; docs/brecq.md)")
    g.add_argument("--holdout", type=holdout_share, metavar="SHARE", help="hold out this share of the calibration "
                   "samples, the last in the file, and keep what a block learned only where it does not raise the "
                   "network's output error on them (guards a small or narrow calibration set against overfitting; docs/brecq.md)")
    g.add_argument("--holdout-metric", choices=HOLDOUT_METRICS, help="what --holdout measures: mse, the squared "
                   "error of the outputs (default), or kl, the KL divergence of a classifier's softmax")
    g.add_argument("--reconstruct-samples", type=positive_int, default=defaults.samples,
                   help="calibration samples reconstruction uses at most (default: %(default)s)")
    g.add_argument("--crop", type=crop_option, metavar="N|auto|off", help="train convolutional blocks on random "
                   "spatial crops: N output positions a side, the inputs with the halo they read, the loss only where "
                   f"exact (default auto: {AUTO_CROP} where that at least halves a block's input; docs/brecq.md)")
    g.add_argument("--seed", type=int, default=defaults.seed, help="random seed of reconstruction and of training "
                   "(default: %(default)s)")


def _bits_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("mixed precision (bit widths per layer; docs/mixed_precision.md)")
    g.add_argument("--bits", choices=["auto"], help="search weight bits per layer under --max-size and/or "
                   "--max-latency (the preset gives the scheme, activation bits and the 8-bit edge layers)")
    g.add_argument("--max-size", metavar="SIZE", help="budget for the layers' weights as the library stores them "
                   "(packed, padded; for --target): e.g. 120KB (1000 bytes), 117KiB, 1.5MB")
    g.add_argument("--max-latency", metavar="TIME", help="budget for the library's latency, batch 1, as measured on "
                   "this machine (e.g. 1.5ms, 800us); with --rpc, for the searched layers' kernels, summed")
    g.add_argument("--bit-choices", default="2,4,8", help="the widths to choose from (default: %(default)s)")
    g.add_argument("--bit-search", choices=["genetic", "greedy", "exact"], default="genetic",
                   help="genetic (BRECQ's), greedy, or exact (an integer program, pair terms included) (default: %(default)s)")
    g.add_argument("--rpc", metavar="HOST:PORT:KEY", help="with --max-latency: time the kernels on a device behind "
                   "this TVM tracker (needed for targets this machine cannot run)")


def bit_budget(args: argparse.Namespace):
    """The BitBudget --bits auto asks for (None without it); budget flags without it are usage errors."""
    from qcompiler.mixed_precision import BitBudget, parse_choices, parse_latency, parse_size

    if not args.bits:
        for flag, value in (("--max-size", args.max_size), ("--max-latency", args.max_latency)):
            if value:
                raise UsageError(f"{flag} needs --bits auto")
        return None
    return BitBudget(parse_size(args.max_size) if args.max_size else None,
                     parse_latency(args.max_latency) if args.max_latency else None, parse_choices(args.bit_choices),
                     args.bit_search, args.seed, args.target, args.rpc)


def reconstruct_config(args: argparse.Namespace) -> ReconstructConfig | None:
    """The ReconstructConfig the options ask for (None without --reconstruct); bad values are usage errors."""
    if not args.reconstruct:
        for flag, value in (("--fisher", args.fisher), ("--qdrop", args.qdrop), ("--crop", args.crop is not None),
                            ("--learn-bias", args.learn_bias), ("--holdout", args.holdout),
                            ("--holdout-metric", args.holdout_metric)):
            if value:
                raise UsageError(f"{flag} needs --reconstruct brecq")
        return None
    if args.holdout_metric and not args.holdout:
        raise UsageError("--holdout-metric needs --holdout SHARE")
    return ReconstructConfig(granularity=args.granularity, iters=args.iters, act_iters=args.act_iters, fisher=args.fisher,
                             qdrop=args.qdrop, samples=args.reconstruct_samples, seed=args.seed,
                             bias_lr=LEARNED_BIAS_LR if args.learn_bias else 0.0, holdout=args.holdout or 0.0,
                             holdout_metric=args.holdout_metric or "mse",
                             crop={None: "auto", "off": None}.get(args.crop, args.crop))


def _more_commands(sub) -> None:
    from qcompiler.cli_analyze import add_command
    from qcompiler.cli_tune import add_commands

    add_commands(sub, positive_int)
    add_command(sub, positive_int)
    sub.add_parser("passes", help="list the registered passes")

    p = sub.add_parser("demo", help="the main job on the bundled model: inspect, optimize, quantize, compile, run")
    p.add_argument("-o", "--output-dir", type=Path, default=Path("qcompiler-demo"))
    _force_option(p)
