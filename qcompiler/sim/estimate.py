"""An estimate of a whole BRECQ reconstruction's time, made before the work starts.

Each block's cost per sample is counted from the graph (multiply-accumulates of its Conv, Gemm
and MatMul layers plus ELEMENT_COST per element it computes), scaled by its crop's share of the
input area. Timing a few jitted training steps of two blocks (the first and the costliest, after
their compilation) gives the seconds per unit of cost on this machine; then each block takes its
iterations' steps, four forward passes over the cached samples (float targets, the loss before
and after, the quantized outputs), the Fisher gradients through the rest of the network when
chosen, and its compilations (as long as the probes' were). It is a model: the summary prints it
beside the time the reconstruction took.
"""

from __future__ import annotations

import dataclasses
import logging
import math
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
        crops = f"with crops on {len(self.cropped)} blocks, {_duration(self.uncropped)} without" if self.cropped \
            else "no crops"
        return f"estimated {_duration(self.seconds)}, {crops}"

    def line(self, blocks: int) -> str:
        """The line printed before the work starts."""
        crops = "; ".join(self.cropped) if self.cropped else "none"
        return (f"reconstruction estimate: {_duration(self.seconds)} for {blocks} blocks (an estimate from "
                f"{PROBE_STEPS} timed steps of two blocks, {self.probe_seconds:.1f} s; without crops "
                f"{_duration(self.uncropped)}); caches {self.cache_bytes / 2**20:.0f} MiB for {self.samples} "
                f"samples; crops: {crops}")


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


def _zeros(model: Model, names, count: int) -> dict[str, np.ndarray]:
    tensors = model.tensors()
    return {n: np.zeros((count, *[d if isinstance(d, int) and d > 0 else 1 for d in (tensors[n].shape or (1,))[1:]]),
                        np.float32) for n in names}


def probe(run, index: int) -> tuple[float, float]:
    """(seconds per training step, seconds to compile it) of block `index` on zero inputs (the
    values do not change the time), as its first phase runs: cropped, and with QDrop if chosen."""
    block, c = run.blocks[index], run.config
    owned = run._owned(block)
    state = QuantState("soft", True, c.qdrop) if c.qdrop > 0 else QuantState("soft", False)
    forward = run.sim.function(block.inputs, block.outputs, quant_hooks(run.model, state, owned))
    batch = c.batch_size
    targets = _zeros(run.model, block.outputs, batch)
    problem = BlockProblem(forward, _zeros(run.model, block.inputs, batch), targets,
                           dict(targets) if c.fisher else None, run.crops[index])
    weights = sorted(w for w in owned if w in run.params["weight_q"])
    learned = ({"rounding": initial_rounding(run.params, run.model.quant, weights)} if weights
               else {"steps": {g: v[0] for g, v in run.params["act"].items()}})
    step, states = make_step(problem, run._phase("probe", max(c.iters, 1), bool(weights), not weights), learned)
    rng, key, times = np.random.default_rng(0), jax.random.PRNGKey(0), []
    for _ in range(PROBE_STEPS + 1):
        inputs, target, fisher, masks = problem.batch(np.arange(batch), rng)
        start = time.perf_counter()
        out = step(learned, states, run.params, inputs, target, fisher, masks, 20.0, 1.0, key)
        jax.block_until_ready(out)
        times.append(time.perf_counter() - start)
    return float(np.median(times[1:])), max(times[0] - float(np.median(times[1:])), 0.0)


def estimate(run) -> Estimate:
    """The estimate for a Reconstruction `run` (qcompiler.sim.blockwise) before its first block."""
    start, c = time.perf_counter(), run.config
    costs = [block_cost(run.model, run.sim.steps_between(b.inputs, b.outputs), run.sim.constants) for b in run.blocks]
    areas = [1.0 if crop is None else crop.area for crop in run.crops]
    chosen = sorted({0, int(np.argmax(costs))})
    probes = [probe(run, i) for i in chosen]
    rate = sum(p[0] for p in probes) / max(sum(costs[i] * areas[i] for i in chosen), 1.0)
    compile_seconds = float(np.mean([p[1] for p in probes]))
    samples = len(next(iter(run.fp_state.values())))
    passes = math.ceil(samples / c.batch_size)
    phases = 1 if c.qdrop > 0 else 2
    steps = c.iters + (0 if c.qdrop > 0 else c.act_iters)

    def total(area: list[float]) -> float:
        seconds = 0.0
        for i, cost in enumerate(costs):
            seconds += steps * rate * cost * area[i] + 4 * passes * rate * cost / 3 + compile_seconds * (phases + 1)
            if c.fisher:
                seconds += passes * rate * sum(costs[i:])
        return seconds

    cropped = [f"{b.name}: {crop.describe()}" for b, crop in zip(run.blocks, run.crops) if crop is not None]
    return Estimate(total(areas), total([1.0] * len(costs)), time.perf_counter() - start, run.cache_bytes, samples,
                    cropped)
