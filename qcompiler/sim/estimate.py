"""An estimate of a whole BRECQ reconstruction's time, made before the work starts.

A few jitted training steps of two blocks (the first and the costliest) are timed after their
compilation, as they will run (cropped where chosen). The other blocks' steps are scaled from
those by their cost per sample, counted from the graph (multiply-accumulates of Conv, Gemm and
MatMul plus ELEMENT_COST per element computed) times their crop's share of the input area. Each
block then takes its iterations' steps, four forward passes over the cached whole samples (float
targets, the loss before and after, the quantized outputs), the Fisher gradients through the rest
of the network when chosen, and its compilations (COMPILES times the probes'). With a held-out
guard, each block also compiles and runs the quantized network from the block on over the
held-out samples (GUARD_COMPILE times the float network's held-out pass, timed when it was made,
per share of the network's ops from the block on), then runs it again after each phase. Without crops,
a step is taken to cost in proportion to the area. It is a model: the summary prints it beside
the time the reconstruction took.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import jax
import numpy as np

from qcompiler.ir import Model
from qcompiler.sim.quantized import QuantState, quant_hooks
from qcompiler.sim.reconstruction import BlockProblem, initial_rounding, make_step

log = logging.getLogger(__name__)

#: What computing one element costs against one multiply-accumulate in a training step
#: (fake quantization, soft rounding and their gradients are memory-bound elementwise work).
ELEMENT_COST = 16.0
PROBE_STEPS = 3
#: A block's compilations (two training steps, the forward functions) and set-up, in units of a
#: probe's compilation (ResNet-8's blocks measured 5-6; the real runs in benchmarks/results/brecq_cost.md
#: show how far the whole estimate landed).
COMPILES = 4.0
#: The guard's first evaluation of a block (compiling the quantized network from the block on, then
#: running it over the held-out samples) against the float network's held-out pass, per share of
#: the network's ops (the corpus mobilenet_v3_small: 7.1 s for the whole network against 3.3 s).
GUARD_COMPILE = 2.2


@dataclasses.dataclass(frozen=True)
class Estimate:
    """seconds: the whole reconstruction as configured; uncropped: the same without crops."""

    seconds: float
    uncropped: float
    probe_seconds: float
    cache_bytes: int
    samples: int
    cropped: list[str]  # "block: HxW of HxW" per cropped block

    def describe(self) -> str:
        count = len(self.cropped)
        crops = (f"with crops on {count} block{'s' if count > 1 else ''}, {_duration(self.uncropped)} without"
                 if self.cropped else "no crops")
        return f"estimated {_duration(self.seconds)}, {crops}"

    def line(self, blocks: int) -> str:
        """The line printed before the work starts."""
        crops = "; ".join(self.cropped) if self.cropped else "none"
        return (f"reconstruction estimate: {_duration(self.seconds)} for {blocks} blocks (an estimate from "
                f"{PROBE_STEPS} timed steps of the first and the costliest block, {self.probe_seconds:.1f} s; "
                f"without crops {_duration(self.uncropped)}); caches {self.cache_bytes / 2**20:.0f} MiB for "
                f"{self.samples} samples; crops: {crops}")


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def block_cost(model: Model, steps, constants: dict) -> float:
    """Per-sample cost units of a block: multiply-accumulates plus ELEMENT_COST per output element."""
    tensors = model.tensors()

    def elements(name: str) -> int:
        shape = (tensors[name].shape or ()) if name in tensors else ()
        return int(np.prod([d if isinstance(d, int) and d > 0 else 1 for d in shape[1:]] or [1]))

    cost = 0.0
    for step in steps:
        out = sum(elements(o) for o in step.outputs)
        cost += ELEMENT_COST * out
        if step.op in ("Conv", "Gemm", "MatMul") and len(step.inputs) > 1:
            weight = constants.get(step.inputs[1])
            shape = np.shape(weight) if weight is not None else tuple(tensors[step.inputs[1]].shape or (1,))
            cost += out * _depth(step, [d if isinstance(d, int) and d > 0 else 1 for d in shape])
    return cost


def _depth(step, shape: list[int]) -> int:
    """Multiply-accumulates per output element of a Conv, Gemm or MatMul with this weight shape."""
    if step.op == "Conv":
        return int(np.prod(shape[1:]))
    if step.op == "Gemm":
        return shape[1] if step.attrs.get("transB", 0) else shape[0]
    return shape[-2] if len(shape) > 1 else shape[0]


def _feeds(run, block, batch: int) -> dict[str, np.ndarray] | None:
    """A probe's inputs: the cached samples where the block reads them (the first block), else zeros
    of the declared shape (the values do not change the time); None where a shape is not known."""
    tensors, feeds = run.model.tensors(), {}
    for name in block.inputs:
        shape = tuple(tensors[name].shape or ())[1:]
        if name in run.fp_state:
            feeds[name] = run.fp_state[name][:batch]
        elif all(isinstance(d, int) and d > 0 for d in shape):
            feeds[name] = np.zeros((batch, *shape), np.float32)
        else:
            return None
    return feeds


def probe(run, index: int) -> tuple[float, float] | None:
    """(seconds per training step, seconds to compile it) of block `index` as its first phase
    runs (cropped, with QDrop if chosen); None where its input shapes are not known beforehand."""
    block, c = run.blocks[index], run.config
    owned = run._owned(block)
    state = QuantState("soft", True, c.qdrop) if c.qdrop > 0 else QuantState("soft", False)
    forward = run.sim.function(block.inputs, block.outputs, quant_hooks(run.model, state, owned))
    batch = min(c.batch_size, len(next(iter(run.fp_state.values()))))
    feeds = _feeds(run, block, batch)
    if feeds is None:
        return None
    shapes = jax.eval_shape(forward, {**run.params, "rng": jax.random.PRNGKey(0)}, feeds)
    targets = {name: np.zeros(s.shape, np.float32) for name, s in zip(block.outputs, shapes)}
    problem = BlockProblem(forward, feeds, targets, dict(targets) if c.fisher else None, run.crops[index])
    weights = run._learned_weights(owned)
    learned = ({"rounding": initial_rounding(run.params, run.model.quant, weights)} if weights
               else {"steps": {g: v[0] for g, v in run.params["act"].items()}})
    step, states = make_step(problem, run._phase("probe", max(c.iters, 1), bool(weights), not weights), learned)
    rng, key, times = np.random.default_rng(0), jax.random.PRNGKey(0), []
    for _ in range(PROBE_STEPS + 1):
        inputs, target, fisher, masks = problem.batch(np.arange(batch), rng)
        start = time.perf_counter()
        jax.block_until_ready(step(learned, states, run.params, inputs, target, fisher, masks, 20.0, 1.0, key))
        times.append(time.perf_counter() - start)
    return float(np.median(times[1:])), max(times[0] - float(np.median(times[1:])), 0.0)


def estimate(run) -> Estimate:
    """The estimate for a Reconstruction `run` (qcompiler.sim.blockwise) before its first block."""
    start, c = time.perf_counter(), run.config
    block_steps = [run.sim.steps_between(b.inputs, b.outputs) for b in run.blocks]
    costs = [block_cost(run.model, s, run.sim.constants) for s in block_steps]
    areas = [1.0 if crop is None else crop.area for crop in run.crops]
    chosen = sorted({0, int(np.argmax(costs))})
    probes = {i: p for i in chosen if (p := probe(run, i)) is not None}  # the first block's is always known
    rate = sum(p[0] for p in probes.values()) / max(sum(costs[i] * areas[i] for i in chosen), 1.0)
    # a training step: measured where probed, else the rate times the block's (cropped) cost
    steps = [probes[i][0] if i in probes else rate * cost * area for i, (cost, area) in enumerate(zip(costs, areas))]
    compile_seconds = float(np.mean([p[1] for p in probes.values()]))
    samples = len(next(iter(run.fp_state.values())))
    passes = samples / c.batch_size
    phases = 1 if c.qdrop > 0 else 2
    iterations = c.iters + (0 if c.qdrop > 0 else c.act_iters)
    guarded = run.reference_seconds is not None
    held_passes = len(run.held_rows) / c.batch_size if guarded else 0.0
    counts = [len(s) for s in block_steps]
    ops = [sum(counts[i:]) / max(sum(counts), 1) for i in range(len(counts))]  # the network's share from block i on

    def total(step: list[float]) -> float:
        """Iterations' steps; per block its compilations and four forward passes over the cached
        whole samples (a third of a whole-sample step per batch); Fisher: a gradient through the rest."""
        whole = [s / a for s, a in zip(steps, areas)]
        seconds = 0.0
        for i in range(len(step)):
            seconds += iterations * step[i] + 4 * passes * whole[i] / 3 + compile_seconds * (COMPILES + phases - 2)
            if c.fisher:
                seconds += passes * sum(whole[i:])
            if guarded:
                seconds += GUARD_COMPILE * run.reference_seconds * ops[i] + phases * held_passes * sum(whole[i:]) / 3
        return seconds

    cropped = [f"{b.name}: {crop.describe()}" for b, crop in zip(run.blocks, run.crops) if crop is not None]
    return Estimate(total(steps), total([s / a for s, a in zip(steps, areas)]), time.perf_counter() - start,
                    run.cache_bytes, samples, cropped)
