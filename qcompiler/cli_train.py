"""The command line's training options (QIL, QAT; docs/training.md) and the config they ask for."""

from __future__ import annotations

import argparse

from qcompiler.cli_options import positive_int
from qcompiler.errors import UsageError
from qcompiler.quant.spec import BITS
from qcompiler.training import RANGE_MODES, QATConfig, QILConfig, TrainConfig


def bit_schedule(text: str) -> tuple[int, ...]:
    """--progressive: comma-separated bit widths, decreasing (e.g. 8,5,4)."""
    try:
        widths = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected bit widths like 8,5,4, got {text!r}") from None
    if any(w not in BITS or w > 8 for w in widths) or list(widths) != sorted(widths, reverse=True):
        raise argparse.ArgumentTypeError(f"{text!r}: widths must be among 2..8 and decreasing, like 8,5,4")
    return widths


def learning_rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value < 10:
        raise argparse.ArgumentTypeError(f"a learning rate must be above 0 (and below 10), got {text}")
    return value


def train_options(p: argparse.ArgumentParser) -> None:
    defaults = TrainConfig()
    g = p.add_argument_group("training (QIL, QAT; docs/training.md)")
    g.add_argument("--train", choices=["qil", "qat"], help="quantization-aware training: qil learns quantization "
                   "intervals (Jung et al. 2019), qat fine-tunes the weights through fake quantizers (the whitepaper)")
    g.add_argument("--train-data", help="training data like --calib (default: the calibration data)")
    g.add_argument("--train-count", type=positive_int, help="use at most this many training samples")
    g.add_argument("--labels", action="store_true", help="cross-entropy on the data's 'labels' array "
                   "(without it: distillation, the KL divergence from the float model's outputs)")
    g.add_argument("--epochs", type=positive_int, default=defaults.epochs, help="default: %(default)s")
    g.add_argument("--lr", type=learning_rate, default=defaults.lr,
                   help="Adam learning rate of the weights (default: %(default)s; cosine decay after a 5%% warm-up)")
    g.add_argument("--interval-lr", type=learning_rate, default=defaults.interval_lr,
                   help="of the intervals, gamma and step sizes (default: %(default)s)")
    g.add_argument("--intervals-only", action="store_true", help="qil: keep the weights, learn only the intervals")
    g.add_argument("--fixed-gamma", type=float, metavar="G", help="qil: keep gamma at G instead of learning it")
    g.add_argument("--progressive", type=bit_schedule, metavar="B,B,...", help="qil: train these widths in turn, "
                   "each from the last (e.g. 8,5,4 for w4a4: the last must be the preset's)")
    g.add_argument("--ranges", choices=RANGE_MODES, default="lsq", help="qat: activation ranges learned (lsq) or "
                   "tracked by an exponential moving average (ema) (default: %(default)s)")


def train_config(args: argparse.Namespace) -> TrainConfig | None:
    """The TrainConfig the options ask for (None without --train); misplaced options are usage errors."""
    method = getattr(args, "train", None)
    misplaced = [flag for flag, value, owner in (
        ("--labels", args.labels, None), ("--train-data", args.train_data, None),
        ("--intervals-only", args.intervals_only, "qil"), ("--fixed-gamma", args.fixed_gamma is not None, "qil"),
        ("--progressive", args.progressive, "qil"), ("--ranges ema", args.ranges == "ema", "qat"))
        if value and (method is None or (owner is not None and owner != method))]
    if misplaced:
        need = "--train" if method is None else "another --train method"
        raise UsageError(f"{misplaced[0]} needs {need} (see qcompiler quantize --help, 'training')")
    if method is None:
        return None
    if getattr(args, "reconstruct", None):
        raise UsageError("choose --train or --reconstruct, not both")
    common = dict(epochs=args.epochs, batch_size=args.batch_size or TrainConfig.batch_size, lr=args.lr,
                  interval_lr=args.interval_lr, labels=args.labels, seed=args.seed)
    if method == "qat":
        return QATConfig(**common, ranges=args.ranges)
    gamma = {} if args.fixed_gamma is None else {"learn_gamma": False, "gamma": args.fixed_gamma}
    return QILConfig(**common, intervals_only=args.intervals_only, progressive=args.progressive or (), **gamma)
