"""Autotuning the convolution kernels on the device that will run them (`qcompiler tune`).

Each convolution of a model on a dot-product instruction is one task (int8_conv.ConvTask: shape,
weight bits, requantization, instruction), and so is each depthwise convolution
(depthwise.DepthwiseTask). Its search space is the template schedule with its knob free: the
output pixels per register tile, any divisor of the output width up to MAX_TILE. The space is
small, so every point is measured (no sampling, no cost model): built by MetaSchedule's local
builder and timed by its local runner on this machine, or by its RPC runner on a device that a
TVM tracker lends (`python -m tvm.exec.rpc_tracker`, `rpc_server`). The template's own tile is
always among the points, so a tuned kernel is never slower than the template as measured.

The result is a JSON database per model and target. `compile --tuning-db` applies it: inside
`applied(db)`, int8_conv.conv2d_kernel and depthwise.depthwise_kernel take each kernel's tile
from it (`tuned_pixel_tile`),
and the build reports how many records it used, so that a database that matches nothing is
seen, not silently ignored. Only loop tiling changes, so a tuned library computes exactly what
the untuned one does (tested bit for bit).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from pathlib import Path

from qcompiler.errors import RemoteDeviceError, UsageError

FORMAT = "qcompiler-tuning/1"
#: Largest pixel tile tried: tile x (channel block) int32 accumulators live in registers (32
#: zmm on AVX-512, 32 q on NEON, 32 HVX vectors), and a few registers hold the operands.
MAX_TILE = 28
#: Failed measurements (a device gone mid-run) are re-submitted this many times; through a
#: tracker they go to another device of the key.
RETRIES = 2


@dataclasses.dataclass
class TaskResult:
    """One kernel's measurements: the template's tile and time, the best, and every point."""

    kernel: str
    template_tile: int
    tile: int
    template_ms: float
    tuned_ms: float
    macs: int
    points: dict        # tile -> ms

    def gops(self) -> float:
        return 2 * self.macs / (self.tuned_ms * 1e6)


@dataclasses.dataclass
class TuningDatabase:
    """Kernel name -> TaskResult, for one target."""

    target: str
    records: dict = dataclasses.field(default_factory=dict)
    peak_gops: float | None = None   # the dot-product kernel's measured peak on the device (peak_gops)
    #: None: measured on the device; else the core whose llvm-mca estimates the records are.
    estimated_for: str | None = None
    used: set = dataclasses.field(default_factory=set)    # kernels a build took a tile from

    @classmethod
    def load(cls, path, target: str | None = None) -> TuningDatabase:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise UsageError(f"{path}: not a tuning database ({exc}); `qcompiler tune` writes one") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("records"), dict):
            raise UsageError(f"{path}: not a tuning database of this version (format {FORMAT!r} expected)")
        if target is not None and data.get("target") != target:
            raise UsageError(f"{path} was tuned for {data.get('target')!r}, not {target!r}: tune for this target, "
                             "or compile for that one")
        try:
            records = {name: TaskResult(**{**r, "points": {int(k): v for k, v in r["points"].items()}})
                       for name, r in data["records"].items()}
        except (TypeError, KeyError, AttributeError) as exc:
            raise UsageError(f"{path}: a malformed record ({exc})") from None
        return cls(data["target"], records, data.get("peak_gops"), data.get("estimated_for"))

    def save(self, path) -> None:
        from qcompiler.files import write_text_atomic

        records = {name: dataclasses.asdict(r) for name, r in sorted(self.records.items())}
        write_text_atomic(Path(path), json.dumps({"format": FORMAT, "target": self.target, "peak_gops": self.peak_gops,
                                                  "estimated_for": self.estimated_for, "records": records}, indent=1) + "\n")


_ACTIVE: TuningDatabase | None = None
_SEEN: dict | None = None   # kernel name -> ConvTask, while conv_tasks collects them


@contextlib.contextmanager
def applied(db: TuningDatabase | None):
    """Kernels built inside take their pixel tile from `db` (records used: db.used). The
    kernel cache is emptied on the way in and out: kernels built with one database's tiles are
    not reused by a build without it."""
    global _ACTIVE
    if db is None:
        yield None
        return
    _clear_kernel_cache()
    _ACTIVE = db
    db.used = set()   # the kernels of this build only
    try:
        yield db
    finally:
        _ACTIVE = None
        _clear_kernel_cache()


def _clear_kernel_cache() -> None:
    from qcompiler.backends.tvm.schedules import depthwise, int8_conv

    int8_conv.conv2d_kernel.cache_clear()
    depthwise.depthwise_kernel.cache_clear()


def scheduled(task, tile):
    """The task's compute scheduled by its template with `tile` output pixels per register tile
    (or its kernel written as TIR with that tile, where it has one)."""
    import tvm

    written = task.written_kernel(tile)
    if written is not None:
        return written

    sch = tvm.s_tir.Schedule(task.compute())
    task.schedule(sch, tile)
    return sch.mod["main"]


def built_kernel(task):
    """The kernel a build uses: the tile from the applied database (or the template's), named
    after the task, opaque to fusion (op_pattern 8: TVM must not fuse a scheduled kernel with
    its neighbours)."""
    return scheduled(task, tuned_pixel_tile(task)).with_attrs(
        {"global_symbol": task.name(), "tirx.is_scheduled": True, "op_pattern": 8})


def tuned_pixel_tile(task) -> int:
    """The pixel tile of a kernel being built: the applied database's, else the template's."""
    if _SEEN is not None:
        _SEEN[task.name()] = task
    width = task.output_width()
    record = _ACTIVE.records.get(task.name()) if _ACTIVE is not None else None
    if record is not None and width % record.tile == 0:
        _ACTIVE.used.add(task.name())
        return record.tile
    return task.template_tile()


def conv_tasks(qdq_onnx, spec, batch: int) -> list:
    """The ConvTasks and DepthwiseTasks a build of the model for `spec` makes, in graph order."""
    global _SEEN
    from qcompiler.backends.tvm.build import lower, schedule
    from qcompiler.backends.tvm.targets import tvm_target

    _clear_kernel_cache()   # every kernel built anew, so that each one is seen
    _SEEN = {}
    try:
        schedule(lower(qdq_onnx, batch), spec, tvm_target(spec))
        return list(_SEEN.values())
    finally:
        _SEEN = None


def candidate_tiles(width: int) -> list[int]:
    return [t for t in range(1, min(width, MAX_TILE) + 1) if width % t == 0]


class Measurer:
    """MetaSchedule's local builder, and its local runner or RPC runner (through a tracker)."""

    def __init__(self, target, rpc: str | None = None, repeat: int = 3, timeout: float = 120.0):
        from tvm.s_tir import meta_schedule as ms

        self.ms, self.target = ms, target
        self.last_error = ""   # the first line of the last failed build or run
        self.builder = ms.builder.LocalBuilder(max_workers=1, timeout_sec=timeout)
        evaluator = ms.runner.EvaluatorConfig(number=3, repeat=repeat, min_repeat_ms=50, enable_cpu_cache_flush=False)
        if rpc is None:
            self.runner = ms.runner.LocalRunner(timeout_sec=timeout, evaluator_config=evaluator)
        else:
            host, port, key = parse_rpc(rpc)
            check_tracker(host, port, key)
            config = ms.runner.RPCConfig(tracker_host=host, tracker_port=port, tracker_key=key,
                                         session_timeout_sec=int(timeout))
            self.runner = ms.runner.RPCRunner(config, evaluator_config=evaluator, max_workers=1)

    def times_ms(self, funcs: list) -> list[float | None]:
        """Median milliseconds of each PrimFunc (None where it failed after RETRIES re-runs)."""
        return [runs[0] if runs else None for runs in self.repeated_ms(funcs, 1)]

    def repeated_ms(self, funcs: list, repeats: int) -> list[list[float]]:
        """Each PrimFunc built once and timed `repeats` times: its medians (empty where it failed)."""
        ms = self.ms
        builds = self.builder.build([ms.builder.BuilderInput(_module(f), self.target) for f in funcs])
        self._note_errors(b.error_msg for b in builds)
        built = [i for i, b in enumerate(builds) if b.error_msg is None]
        times: list[list[float]] = [[] for _ in funcs]
        for _ in range(repeats):
            pending = list(built)
            for _ in range(RETRIES + 1):
                if not pending:
                    break
                inputs = [ms.runner.RunnerInput(builds[i].artifact_path, "cpu",
                                                ms.arg_info.ArgInfo.from_prim_func(funcs[i])) for i in pending]
                results = [future.result() for future in self.runner.run(inputs)]
                for i, result in zip(pending, results):
                    if result.error_msg is None:
                        times[i].append(1e3 * sorted(float(s) for s in result.run_secs)[len(result.run_secs) // 2])
                pending = [i for i, r in zip(pending, results) if r.error_msg is not None]
                self._note_errors(r.error_msg for r in results)
        return times

    def peak_gops(self, isa: str) -> float | None:
        return peak_gops(self, isa)

    def _note_errors(self, messages) -> None:
        for message in messages:
            if message:
                lines = [line for line in str(message).splitlines() if line.strip()]
                self.last_error = lines[-1][:200] if lines else "unknown error"


def _module(func):
    import tvm

    return tvm.IRModule({"main": func.with_attr("global_symbol", "main")})


def tune_task(task, measurer: Measurer, trials: int | None = None) -> TaskResult | None:
    """Every pixel tile of one kernel (at most `trials`, those nearest the template's first),
    measured; None if the template itself could not run."""
    template = task.template_tile()
    tiles = sorted(candidate_tiles(task.output_width()), key=lambda t: (abs(math.log(t / template)), t))[:trials]
    funcs = [scheduled(task, tile) for tile in tiles]
    points = {t: ms for t, ms in zip(tiles, measurer.times_ms(funcs)) if ms is not None}
    if template not in points:
        return None
    best = min(points, key=points.get)
    return TaskResult(task.name(), template, best, points[template], points[best], task.macs(), points)


#: The dot-product kernels whose peak peak_gops measures.
PEAK_KERNELS = ("vnni", "sdot")


def peak_gops(measurer: Measurer, isa: str) -> float | None:
    """The fastest the dot-product kernel runs on the device: 1x1 convolutions whose operands
    stay in L1 (a row of 28 pixels; 512 input channels and one block of output channels, or 256
    and four blocks; no requantization), each at its best tiling, the faster of the two. A
    measured peak of the kernel's inner loop, not the instruction's datasheet peak; the
    per-kernel table gives each kernel's share of it (one block alone ran ~10% below the
    large 7x7 layers' kernels on Zen 4)."""
    from qcompiler.backends.tvm.schedules.int8_conv import ConvTask, channel_block

    block = channel_block(isa)
    tasks = [ConvTask(1, 1, 28, ci, co, 1, 1, (1, 1), (1, 1), (0, 0, 0, 0), None, 8, isa)
             for ci, co in ((512, block), (256, 4 * block))]
    found = [r.gops() for r in (tune_task(t, measurer) for t in tasks) if r is not None]
    return max(found, default=None)


def parse_rpc(text: str) -> tuple[str, int, str]:
    parts = text.rsplit(":", 2)
    if len(parts) != 3 or not parts[1].isdigit() or not parts[2]:
        raise UsageError(f"--rpc {text!r}: expected HOST:PORT:KEY (the tracker and the device key)")
    return parts[0], int(parts[1]), parts[2]


def tracker_devices(host: str, port: int, timeout: float = 10.0) -> dict[str, int]:
    """Key -> free devices of the tracker at host:port; a one-line RemoteDeviceError (exit 7)
    when none answers within `timeout` seconds."""
    import socket

    from tvm import rpc

    try:
        socket.create_connection((host, port), timeout=timeout).close()   # TVM's own connect retries for minutes
        summary = rpc.connect_tracker(host, port).summary()
    except Exception as exc:   # noqa: BLE001 - TVM raises its own errors and socket errors alike
        raise RemoteDeviceError(f"no RPC tracker at {host}:{port} ({type(exc).__name__}: {exc}); start one with "
                                "`python -m tvm.exec.rpc_tracker --host 127.0.0.1 --port 9190`") from None
    return _free_devices(summary)


def check_tracker(host: str, port: int, key: str) -> None:
    """A one-line RemoteDeviceError (exit 7) unless the tracker answers and lends a `key` device."""
    keys = tracker_devices(host, port)
    if keys.get(key, 0) == 0:
        raise RemoteDeviceError(f"the tracker at {host}:{port} has no free device with key {key!r} "
                                f"(it has: {', '.join(f'{k} x{n}' for k, n in keys.items()) or 'none'}); start one "
                                f"with `python -m tvm.exec.rpc_server --tracker {host}:{port} --key {key}`")


def _free_devices(summary: dict) -> dict[str, int]:
    """Key -> free devices, from the tracker's summary."""
    counts: dict[str, int] = {}
    for key, queue in (summary.get("queue_info") or {}).items():   # {"dev": {"free": 2, "pending": 0}}
        counts[key] = counts.get(key, 0) + int(queue.get("free", 0))
    for server in summary.get("server_info", []):
        key = str(server.get("key", "")).split(":")[-1]
        if key and key not in counts:
            counts[key] = 0
    return counts


def tune(qdq_onnx, spec, batch: int, db: TuningDatabase, rpc: str | None = None, time_budget: float | None = None,
         resume: bool = False, trials: int | None = None, report=print, checkpoint=None,
         estimate: str | None = None) -> list[TaskResult]:
    """Tune every convolution of the model (skipping those in `db` with `resume`), adding the
    results to `db`; `report` gets one line per task with the time left, `checkpoint` is
    called after each (to save the database: an interrupted run resumes from there). With
    `estimate` (a core of mca_estimate.CORES) and no `rpc`, candidates are scored by llvm-mca
    instead of timed."""
    from qcompiler.backends.tvm.targets import tvm_target

    tasks = conv_tasks(qdq_onnx, spec, batch)
    if not tasks:
        raise UsageError(f"nothing to tune: the model has no convolution, matmul or depthwise kernel on {spec.name}")
    todo = [t for t in tasks if not (resume and t.name() in db.records)]
    source = None if rpc else estimate
    if db.records and db.estimated_for != source:
        raise UsageError(f"the database holds {_source_text(db.estimated_for)}, and this run would add "
                         f"{_source_text(source)}: give another --db")
    measurer = _measurer(tvm_target(spec), rpc, estimate)
    db.estimated_for = source
    start, done = time.perf_counter(), []
    for index, task in enumerate(todo, 1):
        if time_budget is not None and time.perf_counter() - start > time_budget:
            report(f"time budget spent: {len(todo) - index + 1} task(s) left untuned (run again with --resume)")
            break
        result = tune_task(task, measurer, trials)
        elapsed = time.perf_counter() - start
        left = elapsed / index * (len(todo) - index)
        if result is None:
            report(f"[{index}/{len(todo)}] {task.name()}: the template did not run ({measurer.last_error}); "
                   "left untuned")
            continue
        db.records[result.kernel] = result
        done.append(result)
        if checkpoint is not None:
            checkpoint()
        report(f"[{index}/{len(todo)}] {result.kernel}: template {result.template_ms:.4f} ms (tile "
               f"{result.template_tile}), best {result.tuned_ms:.4f} ms (tile {result.tile}), "
               f"{len(result.points)} points; about {left:.0f} s left")
    if db.peak_gops is None and spec.dot_kernel in PEAK_KERNELS:
        db.peak_gops = measurer.peak_gops(spec.dot_kernel)
    return done


def _source_text(estimated_for: str | None) -> str:
    return f"llvm-mca estimates for {estimated_for}" if estimated_for else "measured times"


def _measurer(target, rpc: str | None, estimate: str | None):
    """The device's timer; llvm-mca's estimate for a named core only where no device is given."""
    if rpc is not None or estimate is None:
        return Measurer(target, rpc)
    from qcompiler.backends.tvm.mca_estimate import Estimator

    return Estimator(target, estimate)


def table(results: list[TaskResult], peak_gops: float | None = None, estimated_for: str | None = None) -> str:
    """The per-task table: template ms, tuned ms, speed-up, GOPS, % of the peak; for llvm-mca
    estimates also the tuned kernel's estimated cycles, under a line that says they are estimates."""
    ghz = None
    if estimated_for:
        from qcompiler.backends.tvm.mca_estimate import get_core

        ghz = get_core(estimated_for).ghz
    lines = [f"llvm-mca estimates for {estimated_for} at a nominal {ghz} GHz, not measurements"] if ghz else []
    lines.append(f"{'kernel':<58} {'tile':>9} {'template ms':>11} {'tuned ms':>9} {'speed-up':>8} {'GOPS':>7}"
                 + (f" {'% peak':>6}" if peak_gops else "") + (f" {'Mcycles':>8}" if ghz else ""))
    for r in results:
        line = (f"{r.kernel[:58]:<58} {r.template_tile:>4} -> {r.tile:<2} {r.template_ms:>11.4f} {r.tuned_ms:>9.4f} "
                f"{r.template_ms / r.tuned_ms:>7.2f}x {r.gops():>7.1f}")
        line += f" {100 * r.gops() / peak_gops:>5.0f}%" if peak_gops else ""
        lines.append(line + (f" {r.tuned_ms * ghz:>8.3f}" if ghz else ""))
    template, tuned = sum(r.template_ms for r in results), sum(r.tuned_ms for r in results)
    if results:
        lines.append(f"{'all tuned kernels':<58} {'':>9} {template:>11.4f} {tuned:>9.4f} {template / tuned:>7.2f}x")
    return "\n".join(lines)
