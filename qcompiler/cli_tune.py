"""`qcompiler tune` and `qcompiler rpc status`: the command line of backends/tvm/tuning.py."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from qcompiler.errors import UsageError


def add_commands(sub, positive_int) -> None:
    p = sub.add_parser("tune", help="time every tiling of each convolution kernel on this machine or on an RPC "
                       "device, and write a tuning database for `compile --tuning-db`")
    p.add_argument("model", type=Path, help="a library folder that `compile` wrote, or a quantized *.qdq.onnx")
    p.add_argument("--target", help="default: the library's target, else native (this machine)")
    p.add_argument("--batch", type=positive_int, help="default: the library's batch, else 1")
    p.add_argument("--db", type=Path, default=Path("tuning.json"),
                   help="the database to write, records of other kernels in it kept (default tuning.json)")
    p.add_argument("--resume", action="store_true", help="skip the kernels the database already has")
    p.add_argument("--trials", type=positive_int, metavar="N",
                   help="time at most N tilings per kernel, those nearest the template's first (default: all)")
    p.add_argument("--time-budget", type=duration, metavar="TIME",
                   help="stop starting new kernels after this long: 90s, 30m, 1h (then --resume goes on)")
    p.add_argument("--rpc", metavar="HOST:PORT:KEY", help="time on a device a TVM RPC tracker lends "
                   "(python -m tvm.exec.rpc_tracker / rpc_server); default: this machine")
    p.add_argument("--estimate", metavar="CORE", help="no ARM device at hand: score aarch64 tilings with llvm-mca's "
                   "model of CORE (cortex-a55, cortex-a76, neoverse-n1, neoverse-v1) instead of timing them; "
                   "estimates, not measurements (--rpc, when given, measures instead)")

    p = sub.add_parser("rpc", help="the devices a TVM RPC tracker has (`qcompiler rpc status`)")
    p.add_argument("action", choices=["status"])
    p.add_argument("--tracker", default="127.0.0.1:9190", metavar="HOST:PORT", help="default 127.0.0.1:9190")


def duration(text: str) -> float:
    """argparse type: seconds from 90, 90s, 30m or 1h."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smh]?)", text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 90s, 30m or 1h")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]


def cmd_tune(args: argparse.Namespace) -> int:
    from qcompiler import ir
    from qcompiler.backends.tvm import tuning
    from qcompiler.backends.tvm.targets import get_target

    qdq_path, library = _model_and_metadata(args.model)
    target = get_target(args.target or (library or {}).get("target", {}).get("name") or "native")
    batch = args.batch or (library or {}).get("batch") or 1
    if target.runner == "qemu-hexagon":
        raise UsageError(f"{target.name}: Hexagon kernels cannot be timed here (qemu has no timing model, and no "
                         "Hexagon RPC launcher is supported); see hvx_cost.md in the library for a static count")
    _check_estimate(args, target)
    if args.rpc is None and args.estimate is None and not target.host:
        hint = " or --estimate CORE (llvm-mca's model of an ARM core)" if target.runner == "qemu-aarch64" else ""
        raise UsageError(f"{target.name} is not this machine's CPU: give --rpc HOST:PORT:KEY of a device of that "
                         f"target{hint} (tuning times kernels where they will run)")
    model = ir.load(qdq_path)
    if not any(n.op in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.nodes):
        raise UsageError(f"{qdq_path} is a float model: tune the folder `qcompiler compile` wrote (or its "
                         "model.qdq.onnx), so that the kernels are the ones the library uses")
    db = tuning.TuningDatabase.load(args.db, target.name) if args.db.exists() else tuning.TuningDatabase(target.name)
    where = (f"the device {args.rpc}" if args.rpc else f"llvm-mca's model of {args.estimate} (an estimate)"
             if args.estimate else "this machine")
    if args.rpc and args.estimate:
        print(f"--rpc given: timing on the device, not estimating for {args.estimate}", file=sys.stderr)
    print(f"tuning {qdq_path} for {target.name}, batch {batch}, on {where} ...", file=sys.stderr)
    results = tuning.tune(model.to_onnx(), target, batch, db, rpc=args.rpc, time_budget=args.time_budget,
                          resume=args.resume, trials=args.trials, checkpoint=lambda: db.save(args.db),
                          report=lambda line: print(line, file=sys.stderr, flush=True), estimate=args.estimate)
    db.save(args.db)
    if db.peak_gops:
        print(f"peak of the dot-product kernel: {db.peak_gops:.0f} GOPS (" + (
            f"llvm-mca's model of {db.estimated_for}'s instruction" if db.estimated_for else "measured: tuning.peak_gops")
            + ")")
    print(tuning.table(results, db.peak_gops, db.estimated_for) if results
          else "no kernel tuned (all in the database already: drop --resume)")
    print(f"wrote {args.db} ({len(db.records)} kernel(s)); apply it with `qcompiler compile {qdq_path} "
          f"--target {target.name} --batch {batch} --tuning-db {args.db} -o OUT`")
    return 0


def _check_estimate(args: argparse.Namespace, target) -> None:
    """--estimate: a core llvm-mca models, for an aarch64 target."""
    if args.estimate is None:
        return
    from qcompiler.backends.tvm.mca_estimate import get_core

    get_core(args.estimate)
    if target.runner != "qemu-aarch64":
        raise UsageError(f"--estimate models ARM cores; {target.name} is not an aarch64 target "
                         "(arm64, arm64-dotprod, arm64-i8mm)")


def _model_and_metadata(path: Path) -> tuple[Path, dict | None]:
    """The QDQ model to tune and, for a library folder, its model.json."""
    if path.is_dir():
        qdq, meta = path / "model.qdq.onnx", path / "model.json"
        if not qdq.exists() or not meta.exists():
            raise UsageError(f"{path} is not a library folder (no model.qdq.onnx and model.json): give the folder "
                             "`qcompiler compile -o` wrote, or a *.qdq.onnx")
        try:
            return qdq, json.loads(meta.read_text())
        except ValueError as exc:
            raise UsageError(f"{meta}: not readable JSON ({exc})") from None
    if not path.exists():
        raise UsageError(f"{path}: no such file or folder")
    return path, None


def cmd_rpc(args: argparse.Namespace) -> int:
    from qcompiler.backends.tvm import tuning

    host, _, port = args.tracker.rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"--tracker {args.tracker!r}: expected HOST:PORT")
    devices = tuning.tracker_devices(host, int(port))
    print(f"tracker {host}:{port}: {sum(devices.values())} free device(s)")
    for key, free in sorted(devices.items()):
        print(f"  {key:<24} {free} free")
    return 0
