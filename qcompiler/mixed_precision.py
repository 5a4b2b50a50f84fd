"""Mixed precision, wired (driver level): measure what each layer's bit width costs in accuracy
(qcompiler.sim.sensitivity) and in bytes and kernel time on the target
(qcompiler.backends.tvm.layer_costs), state the search problem, and hand it to the
assign-bit-widths pass inside quantization (`qcompiler.quantize(..., bits=BitBudget(...))`).

    budget = BitBudget(max_size=120_000)                     # bytes of packed weights
    run = qcompiler.quantize("model.onnx", "calib.npz", "w4a8", bits=budget)
    run.mixed.assignment.bits, run.mixed.assignment.size
"""

from __future__ import annotations

import dataclasses
import glob
import logging
import re

import numpy as np

from qcompiler.data import Dataset
from qcompiler.errors import UsageError
from qcompiler.ir import Model
from qcompiler.progress import Progress
from qcompiler.quant.bitsearch import Assignment, BitProblem, exact_search, greedy_search
from qcompiler.quant.presets import QuantConfig

log = logging.getLogger(__name__)

SIZE_UNITS = {"": 1, "b": 1, "kb": 1000, "k": 1000, "kib": 1024, "mb": 1000**2, "m": 1000**2, "mib": 1024**2}
TIME_UNITS = {"ms": 1.0, "us": 1e-3, "s": 1e3}


def parse_size(text: str) -> int:
    """'120KB' (1000s), '117KiB' (1024s), '1.5MB', '4096' -> bytes."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in SIZE_UNITS:
        raise UsageError(f"--max-size {text!r}: expected a size such as 120KB, 117KiB, 1.5MB or 4096 (bytes)")
    return int(float(match.group(1)) * SIZE_UNITS[unit])


def parse_latency(text: str) -> float:
    """'1.5ms', '800us', '0.002s' -> milliseconds."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(ms|us|s)\s*", text)
    if match is None:
        raise UsageError(f"--max-latency {text!r}: expected a time such as 1.5ms, 800us or 0.002s")
    return float(match.group(1)) * TIME_UNITS[match.group(2)]


def parse_choices(text: str) -> tuple[int, ...]:
    try:
        choices = tuple(sorted({int(b) for b in text.split(",")}))
    except ValueError:
        choices = ()
    if not choices or any(b not in (2, 4, 8) for b in choices):
        raise UsageError(f"--bit-choices {text!r}: a comma-separated subset of 2,4,8 (the widths the kernels pack)")
    return choices


@dataclasses.dataclass(frozen=True)
class BitBudget:
    """What `--bits auto` asks for: budgets, bit choices, search, and where costs are measured."""

    max_size: int | None = None       # bytes of the layers' weights as the library stores them
    max_latency: float | None = None  # ms: the whole library on a host target (else the searched kernels)
    choices: tuple[int, ...] = (2, 4, 8)
    method: str = "genetic"
    seed: int = 0
    target: str = "native"
    rpc: str | None = None            # HOST:PORT:KEY of a tracker, for latencies on a remote device
    samples: int = 128
    fisher: bool = True

    def __post_init__(self) -> None:
        if self.max_size is None and self.max_latency is None:
            raise UsageError("--bits auto needs a budget: --max-size (e.g. 120KB) and/or --max-latency (e.g. 1.5ms)")

    def describe(self) -> str:
        parts = ([f"size <= {self.max_size:,} bytes"] if self.max_size is not None else []) + \
            ([f"latency <= {self.max_latency:.3f} ms"] if self.max_latency is not None else [])
        return " and ".join(parts)


@dataclasses.dataclass(frozen=True)
class WholeLatency:
    """The whole library measured once at a reference assignment (every searched layer at the
    preset's weight bits): what the searched layers' kernels do not account for (pooling,
    elementwise ops, layers in TVM's generic code, requantization between kernels) is its time
    less those kernels' measured times, and does not depend on the searched bits. That rest is
    negative where the kernels timed alone (each a call of its own, from the timing runner) sum
    to more than the whole library, as small kernels on a dot-product CPU do: a prediction is then
    still the reference library plus the chosen kernels' differences from the reference ones, in
    which a per-kernel overhead of the timing cancels."""

    library_ms: float     # median of the reference library's runs, batch 1
    spread: float         # (p90 - p10) / median of those runs
    reference_bits: int
    kernels_ms: float     # the searched layers' kernels at reference_bits, summed (measured alone)

    @property
    def rest_ms(self) -> float:
        return self.library_ms - self.kernels_ms

    def line(self) -> str:
        return (f"the W{self.reference_bits} library measured {self.library_ms:.3f} ms (spread {100 * self.spread:.0f}%), "
                f"its searched kernels {self.kernels_ms:.3f} ms of it")


def library_latency(model: Model, config: QuantConfig, data: Dataset, spec, repeat: int = 50,
                    use_cache: bool = True, qdq: Model | None = None) -> tuple[float, float]:
    """(median ms, (p90 - p10) / median) of one batch-1 run of `model`'s library on this machine,
    quantized as `config` says with nearest rounding (ranges from 8 samples: _quick_qdq, or `qdq`
    where the caller made that already). Cached per model, config and target."""
    import json
    import tempfile

    from qcompiler.backends.tvm.runtime import load
    from qcompiler.compiler import compile_qdq, write_library
    from qcompiler.files import cache_root, read_cache, write_cache

    path = cache_root() / "latency" / f"library-{spec.name}-{_quick_build_digest(model, config, spec)}.json"
    cached = read_cache(path, _median_and_spread) if use_cache else None
    if cached is not None:
        return cached
    sample = dict(data.head(min(8, data.count)).arrays)
    qdq = _quick_qdq(model, config, data) if qdq is None else qdq
    with tempfile.TemporaryDirectory(prefix="qcompiler-latency-") as folder:
        write_library(compile_qdq(qdq, spec, batch=1), qdq, folder)
        timing = load(folder).time(sample, repeat=repeat)
    spread = (timing.p90_ms - timing.p10_ms) / timing.median_ms
    if use_cache:
        write_cache(path, json.dumps({"median_ms": timing.median_ms, "spread": spread}))
    return timing.median_ms, spread


def _quick_build_digest(model: Model, config: QuantConfig, spec, *extra, samples: Dataset | None = None) -> str:
    """The cache key of what quick builds of `model` quantized as `config` for `spec` measure
    (with `samples`: the calibration samples they were quantized with)."""
    import hashlib

    from qcompiler import __version__

    digest = hashlib.sha256(repr((__version__, spec.name, config.preset, config.edge_8bit,
                                  [dataclasses.astuple(o) for o in config.overrides], extra)).encode())
    digest.update(model.to_onnx().SerializeToString(deterministic=True))
    if samples is not None:
        samples.update_digest(digest)
    return digest.hexdigest()[:32]


def kernel_latency(model: Model, config: QuantConfig, data: Dataset, spec, shapes: dict, widths,
                   rpc: str | None = None, progress: bool = True, quick: dict | None = None):
    """measure_latency of `shapes`' layers at `widths` with the kernels builds make (built_kernels),
    cached per model, config, calibration samples, widths, target and device: with a cached table
    a new budget skips the quick builds (12 s on a small net, 41 s on the ImageNet MobileNetV2)
    as well as the timing. Where it builds, `quick` gets bits -> the quick QDQ model."""
    from qcompiler.backends.tvm.layer_costs import KERNELS_VERSION, LatencyTable, measure_latency
    from qcompiler.files import cache_root, read_cache, write_cache

    key = _quick_build_digest(model, config, spec, KERNELS_VERSION, tuple(widths), sorted(shapes), rpc,
                              samples=data.head(min(8, data.count)))
    path = cache_root() / "latency" / f"plan-{spec.name}-{key}.json"
    cached = read_cache(path, LatencyTable.from_json)
    if cached is not None:
        return cached
    built = built_kernels(model, config, data, spec, shapes, widths, progress, quick)
    bar = Progress(f"kernel latency on {rpc or spec.name}", 1, enabled=progress)
    table = measure_latency(shapes, widths, spec, rpc, built=built)
    bar.advance(1)   # the bar's own time: ~0 s when the kernels' table came from the cache
    bar.close()
    write_cache(path, table.to_json())
    return table


def _quick_qdq(model: Model, config: QuantConfig, data: Dataset):
    """The model quantized as `config` says with nearest rounding, ranges from 8 samples and no
    bias correction: enough to see which kernels a build makes. Their shapes and bits do not
    depend on the ranges; their requantization form (int32 parts, ties) does, through the
    scales and the bias, so a final build can pick a different form for a layer than this one
    did (timed latencies agreed with measured libraries within 2% on three networks)."""
    from qcompiler.driver import quantize

    sample = dict(data.head(min(8, data.count)).arrays)
    return quantize(model.copy(), sample, dataclasses.replace(config, bias_correction=False), progress=False).qdq


def built_kernels(model: Model, config: QuantConfig, data: Dataset, spec, shapes: dict, widths,
                  progress: bool = True, quick: dict | None = None) -> dict:
    """(layer, bits) -> the kernel task a build makes for each of `shapes`' layers at each of
    `widths` (layer_costs.built_tasks), from one quick quantization per width with every layer
    of `shapes` at it (left in `quick`, bits -> QDQ model, where given)."""
    from qcompiler.backends.tvm.layer_costs import built_tasks, kernel_task
    from qcompiler.quant.presets import Override

    bar = Progress(f"the kernels of builds at {', '.join(map(str, widths))} bits", len(widths), enabled=progress)
    qdq_by_bits = {}
    for bits in widths:
        uniform = tuple(Override(glob.escape(name), weight_bits=bits) for name in shapes)
        qdq = _quick_qdq(model, dataclasses.replace(config, overrides=config.overrides + uniform), data)
        qdq_by_bits[bits] = qdq.to_onnx()
        if quick is not None:
            quick[bits] = qdq
        bar.advance(1)
    bar.close()
    found = built_tasks(shapes, qdq_by_bits, spec)
    unmatched = [f"{name} at {bits}" for name, shape in shapes.items() for bits in widths
                 if (name, bits) not in found and kernel_task(shape, bits, spec) is not None]
    if unmatched:   # e.g. a 4-bit layer whose weights span at most 4 values, which a build packs as 2-bit
        log.info("latency: %d layer widths (%s) made no kernel of their shape in the quick builds; their time is "
                 "that of the kernel with the slowest requantization", len(unmatched), ", ".join(unmatched[:5]))
    return found


def _median_and_spread(text: str) -> tuple[float, float]:
    import json

    body = json.loads(text)
    return float(body["median_ms"]), float(body["spread"])


@dataclasses.dataclass
class MixedPrecision:
    """The measured inputs of the search, the problem, and the answers (the chosen method's and
    the baselines' on the same problem)."""

    budget: BitBudget
    problem: BitProblem
    table: object                     # qcompiler.sim.sensitivity.SensitivityTable
    sizes: dict[str, dict[int, int]]  # every quantized layer: bits -> stored weight bytes
    latency: object = None            # qcompiler.backends.tvm.layer_costs.LatencyTable
    pinned: dict[str, int] = dataclasses.field(default_factory=dict)   # layers kept at fixed bits (edges)
    whole: WholeLatency | None = None  # the measured library the latency budget is anchored to
    assignment: Assignment | None = None
    baselines: dict[str, Assignment] = dataclasses.field(default_factory=dict)

    def bits_of(self) -> dict[str, int]:
        chosen = self.assignment.by_layer(self.problem) if self.assignment else {}
        return {**self.pinned, **chosen}

    def summary(self) -> str:
        a = self.assignment
        counts = {b: sum(1 for v in a.bits if v == b) for b in sorted(set(a.bits))}
        what = "predicted latency" if self.whole else "searched kernels"
        reached = f"{a.size:,} bytes" + (f", {what} {a.latency:.3f} ms" if self.problem.latency else "")
        bits = self.bits_of()
        return (f"{a.method} search, budget {self.budget.describe()}: reached {reached}; "
                + ", ".join(f"{n} layers at {b} bits" for b, n in counts.items())
                + (f" (+{len(self.pinned)} pinned)" if self.pinned else "")
                + f"; in graph order: {' '.join(str(bits[n]) for n in self.sizes if n in bits)}")


def searched_layers(model: Model, config: QuantConfig) -> tuple[dict, dict[str, int], int]:
    """(layer -> (weight, op, axis)) of every quantized layer, the pinned ones -> bits (the
    first and last at 8 where the preset keeps edges at 8; overrides with wbits), and the bytes
    of the weights of layers left in float (skipped by an override: float32 in the library)."""
    from qcompiler.passes.annotate_quant import quantized_layers, weight_axis

    layers, pinned, floating = {}, {}, 0
    found = quantized_layers(model)
    for node in found:
        axis = weight_axis(node, model.const_value(node.inputs[1]))
        edge = node is found[0] or node is found[-1]
        spec = config.weight_spec(node.name, axis, edge)
        if spec is None:
            floating += model.const_value(node.inputs[1]).astype(np.float32).nbytes
            continue
        layers[node.name] = (node.inputs[1].name, node.op, axis)
        overridden = any(o.matches(node.name) and o.weight_bits for o in config.overrides)
        if (edge and config.edge_8bit) or overridden:
            pinned[node.name] = spec.bits
    return layers, pinned, floating


def plan(model: Model, config: QuantConfig, data: Dataset, budget: BitBudget, progress: bool = True) -> MixedPrecision:
    """Measure sensitivities and costs of a float (canonicalized, BN-folded) model and state the problem."""
    from qcompiler.backends.tvm.layer_costs import layer_shapes, stored_weight_bytes
    from qcompiler.backends.tvm.targets import get_target
    from qcompiler.passes.partition_blocks import partition
    from qcompiler.sim.sensitivity import SensitivityConfig, analyze

    layers, pinned, floating = searched_layers(model, config)
    searched = [name for name in layers if name not in pinned]
    if not searched:
        raise UsageError("--bits auto: no layer is left to search (every quantized layer is pinned by the preset's "
                         "8-bit edges or an override)")
    spec = get_target(budget.target)
    shapes = layer_shapes(model, list(layers))
    choices = tuple(budget.choices)
    sizes = {name: {b: stored_weight_bytes(shapes[name], b, spec) for b in (2, 4, 8)} for name in layers}
    latency = None
    if budget.max_latency is not None and budget.rpc is None and not spec.host:
        raise UsageError(f"--max-latency on {spec.name}: this machine cannot run its kernels; time them on a device "
                         "with --rpc HOST:PORT:KEY (a TVM tracker; docs/tuning.md)")
    whole = None
    if budget.max_latency is not None:
        reference = config.preset.weights.bits
        widths = sorted({*choices, reference})
        quick: dict = {}   # the reference width's quick build, made for the kernels, serves the library
        latency = kernel_latency(model, config, data, spec, {n: shapes[n] for n in searched}, widths, budget.rpc,
                                 progress, quick)
        if all(v is None for n in searched for v in latency.ms[n].values()):
            log.warning("--max-latency: no searched layer has a kernel of its own on %s (TVM's generic code, whose "
                        "time does not depend on the bits), so the budget constrains nothing", spec.name)
        whole = _whole_latency(model, config, data, spec, budget, latency, searched, reference, progress,
                               quick.get(reference))
    costs = _problem(searched, choices, sizes, latency, budget, pinned, floating,
                     [(0.0,) * len(choices)] * len(searched), {}, whole)
    try:   # before the sensitivities: an impossible budget is a quick usage error
        costs.check_reachable()
    except UsageError as error:
        raise UsageError(f"{error}, on {spec.name}") from None
    table = analyze(model, layers, partition(model, "block"), data, config.layer_spec_at,
                    SensitivityConfig(choices, budget.fisher, budget.samples, network=False), progress=progress)
    problem = _problem(searched, choices, sizes, latency, budget, pinned, floating,
                       [tuple(table.layer(n).block_error[b] for b in choices) for n in searched],
                       _pairs(table, searched, choices), whole)
    return MixedPrecision(budget, problem, table, sizes, latency, pinned, whole=whole)


def _whole_latency(model, config, data, spec, budget: BitBudget, latency, searched, reference: int,
                   progress: bool, qdq: Model | None = None) -> WholeLatency | None:
    """The reference library measured on this machine (None through --rpc: the budget is then on
    the searched kernels alone, the rest of the model not being timed remotely); `qdq` its quick
    build where one was made (every searched layer at the reference bits is the config itself)."""
    if budget.rpc is not None:
        log.warning("--max-latency through --rpc bounds the searched layers' kernels, summed: the rest of the "
                    "model is not timed on the device")
        return None
    bar = Progress(f"the W{reference} library's latency on {spec.name}", 1, enabled=progress)
    library_ms, spread = library_latency(model, config, data, spec, qdq=qdq)
    whole = WholeLatency(library_ms, spread, reference, sum(latency.ms[n][reference] or 0.0 for n in searched))
    bar.advance(1)
    bar.close(f"median {library_ms:.3f} ms")
    if whole.library_ms < whole.kernels_ms:
        log.info("latency: %s, less than its kernels timed alone (each call's overhead): predictions are the "
                 "library plus the chosen kernels' differences from these", whole.line())
    return whole


def _problem(searched, choices, sizes, latency, budget: BitBudget, pinned, floating: int, sensitivity,
             pairs, whole: WholeLatency | None = None) -> BitProblem:
    return BitProblem(
        tuple(searched), tuple(choices for _ in searched), tuple(map(tuple, sensitivity)),
        tuple(tuple(sizes[n][b] for b in choices) for n in searched), budget.max_size,
        None if latency is None else tuple(tuple(latency.ms[n][b] or 0.0 for b in choices) for n in searched),
        budget.max_latency, fixed_size=floating + sum(sizes[n][b] for n, b in pinned.items()),
        fixed_latency=whole.rest_ms if whole else 0.0, pairs=pairs)


def _pairs(table, searched: list[str], choices) -> dict:
    index = {name: i for i, name in enumerate(searched)}
    pairs = {}
    for key, values in table.pairs.items():
        a, b = key.split("|")
        if a in index and b in index:
            pairs[(index[a], index[b])] = np.array([[values[f"{ba},{bb}"] for bb in choices] for ba in choices])
    return pairs


def baselines(problem: BitProblem) -> dict[str, Assignment]:
    """Greedy and exact on the same problem."""
    return {"greedy": greedy_search(problem), "exact": exact_search(problem)}
