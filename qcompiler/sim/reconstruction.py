"""Block reconstruction's optimisation (BRECQ, Li et al. 2021; AdaRound, Nagel et al. 2020;
QDrop, Wei et al. 2022): learn a block's weight rounding and activation step sizes so that its
quantized output matches the float block's output on calibration data.

`BlockProblem` is one block's data and functions (with random spatial crops of its samples for a
convolutional block: qcompiler.sim.crops); `learn` runs one phase (rounding, step sizes, or both
at once for QDrop) with Adam, and returns the learned values and the loss curve.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from qcompiler.progress import Progress
from qcompiler.quant.maths import MIN_SCALE
from qcompiler.sim.crops import Crops
from qcompiler.sim.fake_quant import adaround_init, rounding_regularizer


@dataclasses.dataclass(frozen=True)
class Phase:
    """One optimisation phase. rounding/steps: what is learned; the rest are BRECQ's knobs."""

    label: str
    iters: int
    rounding: bool
    steps: bool
    lr: float = 1e-3  # Adam on AdaRound's V (BRECQ: torch's default)
    step_lr: float = 4e-4  # Adam on activation step sizes, cosine decay to 0
    reg_weight: float = 0.01  # lambda
    beta: tuple[float, float] = (20.0, 2.0)
    warmup: float = 0.2
    batch_size: int = 32
    bias_lr: float = 0.0  # Adam on the biases learned with this phase (if any), cosine decay to 0


@dataclasses.dataclass
class BlockProblem:
    """forward(params, inputs) -> block outputs (a traced function of the quantized block);
    inputs/targets: arrays over calibration samples (quantized-model inputs, float outputs);
    weights: Fisher weights per output (|dKL/d output| + 1, as the BRECQ code), or None;
    crops: train on random spatial crops of the samples (None: whole samples)."""

    forward: Callable
    inputs: dict[str, np.ndarray]
    targets: dict[str, np.ndarray]
    fisher: dict[str, np.ndarray] | None = None
    crops: Crops | None = None

    @property
    def count(self) -> int:
        return len(next(iter(self.inputs.values())))

    def batch(self, index: np.ndarray, rng: np.random.Generator):
        """The samples at `index`, cropped if chosen: (inputs, targets, fisher, masks); fisher and
        masks None when not used, else lists over the outputs like targets."""
        inputs = {k: v[index] for k, v in self.inputs.items()}
        targets = {k: v[index] for k, v in self.targets.items()}
        fisher = None if self.fisher is None else {k: self.fisher[k][index] for k in self.targets}
        if self.crops is not None:
            return self.crops.take(rng, inputs, targets, fisher)
        return inputs, list(targets.values()), None if fisher is None else list(fisher.values()), None


def beta_at(step: int, phase: Phase) -> float:
    """The regulariser's exponent: constant through the warm-up, then linear from beta[0] to beta[1]."""
    start = phase.warmup * phase.iters
    if step < start:
        return phase.beta[0]
    progress = (step - start) / max(phase.iters - start, 1)
    return phase.beta[1] + (phase.beta[0] - phase.beta[1]) * max(0.0, 1.0 - progress)


def reconstruction_loss(outputs, targets, fisher, masks=None) -> jnp.ndarray:
    """Squared error summed over channels (axis 1), averaged over the rest; Fisher-weighted if
    given; with masks ([samples, height, width] per output), averaged over the masked positions."""
    total = 0.0
    for index, (out, target) in enumerate(zip(outputs, targets)):
        error = jnp.square(out - target)
        if fisher is not None:
            error = error * jnp.square(fisher[index])
        if masks is not None:
            mask = masks[index]
            total = total + jnp.sum(jnp.sum(error, axis=1) * mask) / jnp.maximum(jnp.sum(mask), 1.0)
        else:
            total = total + (jnp.mean(jnp.sum(error, axis=1)) if error.ndim > 1 else jnp.mean(error))
    return total


def initial_rounding(params: dict, quant: dict, weights: list[str]) -> dict:
    """AdaRound's V for each weight, starting the soft weight at the float weight."""
    return {w: adaround_init(params["weights"][w], params["weight_q"][w][0], quant[w].spec.axis or 0)
            for w in weights}


#: A learned step size stays above this share of the step it started from. Adam moves a step by
#: about its learning rate each iteration whatever the step's size, so a small step can be
#: driven to zero; at the float32 floor (MIN_SCALE) x / step overflows in the gradient and the
#: step became NaN (a W4A8 reconstruction of the ImageNet MobileNetV2: exit 70 at write-back).
MIN_STEP_SHARE = 1e-3


def merge_learned(params: dict, learned: dict) -> dict:
    """`params` with learned rounding, biases (which override the constants, as weights do) and
    step sizes (kept above MIN_STEP_SHARE of the step they replace, and above the smallest scale)
    in place."""
    act = dict(params["act"])
    for group, scale in learned.get("steps", {}).items():
        floor = jnp.maximum(MIN_STEP_SHARE * params["act"][group][0], MIN_SCALE)
        act[group] = (jnp.maximum(scale, floor), params["act"][group][1])
    merged = {**params, "rounding": {**params["rounding"], **learned.get("rounding", {})}, "act": act}
    if "bias" in learned:
        merged["weights"] = {**params["weights"], **learned["bias"]}
    return merged


def _optimizers(phase: Phase) -> dict:
    return {"rounding": optax.adam(phase.lr),
            "steps": optax.adam(optax.cosine_decay_schedule(phase.step_lr, max(phase.iters, 1))),
            "bias": optax.adam(optax.cosine_decay_schedule(phase.bias_lr, max(phase.iters, 1)))}


def make_step(problem: BlockProblem, phase: Phase, learned: dict):
    """The jitted Adam step of `phase` and its optimiser states for `learned`:
    step(values, states, base, inputs, targets, fisher, masks, beta, reg_on, key) -> (values, states, loss)."""
    optimizers = _optimizers(phase)
    states = {k: optimizers[k].init(v) for k, v in learned.items()}

    def loss_fn(values, base, inputs, targets, fisher, masks, beta, reg_on, key):
        merged = merge_learned({**base, "rng": key}, values)
        rec = reconstruction_loss(problem.forward(merged, inputs), targets, fisher, masks)
        reg = sum((rounding_regularizer(v, beta) for v in values.get("rounding", {}).values()), 0.0)
        return rec + reg_on * phase.reg_weight * reg, rec

    @jax.jit
    def step(values, states, base, inputs, targets, fisher, masks, beta, reg_on, key):
        grads, rec = jax.grad(loss_fn, has_aux=True)(values, base, inputs, targets, fisher, masks, beta, reg_on, key)
        new_values, new_states = {}, {}
        for kind in values:
            updates, new_states[kind] = optimizers[kind].update(grads[kind], states[kind], values[kind])
            new_values[kind] = optax.apply_updates(values[kind], updates)
        return new_values, new_states, rec

    return step, states


def learn(problem: BlockProblem, params: dict, learned: dict, phase: Phase, seed: int,
          progress: bool = True) -> tuple[dict, list[float]]:
    """Run `phase` over `learned` ({"rounding": {weight: V}, "steps": {group: scale}, "bias": {name:
    bias}}, any of them); returns the
    learned values and the reconstruction loss every 1% of the iterations."""
    step, states = make_step(problem, phase, learned)
    rng = np.random.default_rng(seed)
    key = jax.random.PRNGKey(seed)
    bar = Progress(phase.label, phase.iters, progress)
    curve, every = [], max(phase.iters // 100, 1)
    for i in range(phase.iters):
        index = rng.choice(problem.count, size=min(phase.batch_size, problem.count), replace=False)
        inputs, targets, fisher, masks = problem.batch(index, rng)
        reg_on = float(phase.rounding and i >= phase.warmup * phase.iters)
        learned, states, rec = step(learned, states, params, inputs, targets, fisher, masks, beta_at(i, phase),
                                    reg_on, jax.random.fold_in(key, i))
        if i % every == 0 or i == phase.iters - 1:
            curve.append(float(rec))
            bar.advance(i + 1 - bar.done, f"loss {curve[-1]:.4g}")
    bar.close()
    return learned, curve


def block_loss(problem: BlockProblem, params: dict, batch_size: int = 256) -> float:
    """The reconstruction loss over all of a block's samples (evaluation, in batches)."""
    names = list(problem.targets)
    count = len(next(iter(problem.inputs.values())))
    forward = jax.jit(problem.forward)
    total = 0.0
    for start in range(0, count, batch_size):
        part = slice(start, start + batch_size)
        outputs = forward(params, {k: v[part] for k, v in problem.inputs.items()})
        fisher = None if problem.fisher is None else [problem.fisher[k][part] for k in names]
        total += float(reconstruction_loss(outputs, [problem.targets[k][part] for k in names], fisher)) * len(
            outputs[0])
    return total / count
