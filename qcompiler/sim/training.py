"""The training loop QIL and QAT share (qcompiler.passes.train_quant runs it).

The whole quantized network is simulated (qcompiler.sim.quantizers' hooks) and trained with Adam
on the task loss: cross-entropy on labels, or without labels the KL divergence from the float
model's outputs (computed once, before training). Batches are drawn from a seeded permutation
each epoch; the float weights, intervals and step sizes are what `Trainable` says. A progressive
schedule trains each bit width in turn from where the last stopped.
"""

from __future__ import annotations

import logging
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from qcompiler.data import Dataset
from qcompiler.errors import CalibrationDataError, UnsupportedModelError, UsageError
from qcompiler.progress import Progress
from qcompiler.quant.maths import MIN_SCALE, params_from_range
from qcompiler.sim.interpreter import Interpreter
from qcompiler.sim.quantizers import TrainedQuantizers
from qcompiler.supervise import raise_if_interrupted
from qcompiler.training import QATConfig, QILConfig, TrainConfig

log = logging.getLogger(__name__)

#: Parameter kinds learned at the weights' learning rate; the rest learn at interval_lr.
WEIGHT_KINDS = ("weights",)


def trainable_kinds(config: TrainConfig) -> tuple[str, ...]:
    """The parts of params a method learns (qcompiler.sim.quantizers' layout)."""
    if isinstance(config, QILConfig):
        kinds = ["qil_w", "qil_a", "qil_t", "act"] + (["qil_gamma"] if config.learn_gamma else [])
        return tuple(kinds if config.intervals_only else ["weights", *kinds])
    if isinstance(config, QATConfig) and config.ranges == "ema":
        return ("weights",)
    return ("weights", "act")


def merge(frozen: dict, trainable: dict) -> dict:
    """params with the trainable parts in place. Step sizes ("act") are learned as multipliers of
    the starting scale (kept above a thousandth of it), so one learning rate suits any scale."""
    params = dict(frozen)
    for kind, values in trainable.items():
        if kind == "act":
            params["act"] = {**frozen["act"], **{g: (frozen["act"][g][0] * jnp.maximum(m, 1e-3), frozen["act"][g][1])
                                                 for g, m in values.items()}}
        else:
            params[kind] = {**frozen.get(kind, {}), **values}
    return params


def split(params: dict, kinds, interval_groups: set[str]) -> dict:
    """The trainable parts of params: params[kind] for each kind; for "act", a multiplier (1 at
    the start) of the scale of each group without a QIL interval."""
    trainable = {k: params[k] for k in kinds if k != "act" and params.get(k)}
    steps = {g: jnp.float32(1.0) for g in params.get("act", {}) if g not in interval_groups}
    if "act" in kinds and steps:
        trainable["act"] = steps
    return trainable


class Training:
    """One training run of an annotated, calibrated model (see the module docstring)."""

    def __init__(self, model, config: TrainConfig, data: Dataset, held_out: Dataset | None = None,
                 progress: bool = True) -> None:
        self.model, self.config, self.data, self.held_out, self.progress = model, config, data, held_out, progress
        self.sim = Interpreter(model)
        gamma = config.gamma if isinstance(config, QILConfig) else 1.0
        self.quantizers = TrainedQuantizers(model, config.method, gamma)
        self.params = self.quantizers.initial_params()
        self.teacher_params = {"weights": dict(self.params["weights"])}
        self.inputs = self.sim.graph_inputs
        self.output = self.sim.graph_outputs[0]
        self.float_fn = jax.jit(self.sim.function(self.inputs, [self.output]))
        self.classes, self.probabilities = self._output_kind()
        self.chosen = self._chosen_samples()
        self.losses: list[float] = []
        self.evaluations: list[tuple[str, float]] = []
        self._eval_fns: dict = {}
        self._ranges: dict[str, tuple[float, float]] = {}  # EMA ranges (QAT)

    # ---- checks before training ----

    def _output_kind(self) -> tuple[int | None, bool]:
        """Classes of the first output if it is (batch, classes) scores, and whether those are
        probabilities already (rows of non-negative values summing to 1)."""
        sample = {k: self.data.arrays[k][:4] for k in self.inputs}
        out = np.asarray(self.float_fn({}, sample)[0])
        if out.ndim != 2 or out.shape[1] < 2:
            if self.config.labels:
                raise UnsupportedModelError(
                    f"{self.model.path or 'model'}: --labels trains with cross-entropy, which needs a classifier's "
                    f"(batch, classes) output; output {self.output} has shape {list(out.shape)}. "
                    "Leave out --labels to distil from the float model instead")
            return None, False
        probabilities = bool(np.all(out >= 0) and np.allclose(out.sum(axis=1), 1.0, atol=1e-3))
        return out.shape[1], probabilities

    def _chosen_samples(self) -> np.ndarray:
        count = self.data.count if self.config.samples is None else min(self.config.samples, self.data.count)
        chosen = np.sort(np.random.default_rng(self.config.seed).permutation(self.data.count)[:count])
        if self.config.labels:
            check_labels(self.data, self.classes)
        return chosen

    # ---- losses ----

    def _log_probs(self, out):
        return jnp.log(jnp.maximum(out, 1e-30)) if self.probabilities else \
            jax.nn.log_softmax(out / self.config.temperature, axis=-1)

    def _task_loss(self, out, target):
        if self.config.labels:
            return -jnp.mean(jnp.take_along_axis(self._log_probs(out), target[:, None].astype(jnp.int32), axis=1))
        if self.classes is None:  # not a classifier: match the float output
            return jnp.mean(jnp.square(out - target))
        p = jnp.exp(target)  # target: the float model's log-probabilities
        return jnp.sum(p * (target - self._log_probs(out))) / len(out)

    def _targets(self) -> np.ndarray:
        """Labels, or the float model's log-probabilities (outputs, for non-classifiers) per sample."""
        if self.config.labels:
            return np.asarray(self.data.labels)
        bar = Progress("float outputs for distillation", len(self.chosen), self.progress)
        parts = []
        for start in range(0, len(self.chosen), 256):
            index = self.chosen[start:start + 256]
            out = self.float_fn({}, {k: self.data.arrays[k][index] for k in self.inputs})[0]
            parts.append(np.asarray(self._log_probs(out) if self.classes else out))
            bar.advance(len(index))
            raise_if_interrupted()
        bar.close()
        values = np.zeros((self.data.count, *parts[0].shape[1:]), np.float32)
        values[self.chosen] = np.concatenate(parts)
        return values

    # ---- the loop ----

    def run(self) -> dict:
        """Train every stage; returns the learned params."""
        targets = self._targets()
        stages = list(self.config.progressive) or [None]
        final = self.quantizers.final_bits()
        if stages[0] is not None and stages[-1] != final:
            raise UsageError(f"--progressive {','.join(map(str, stages))} must end at the preset's width "
                             f"({final} bits)" if final else "--progressive needs a preset below 8 bits")
        self.loss_before = self.mean_loss(targets, None)
        for number, bits in enumerate(stages):
            self._stage(bits, targets, f"stage {number + 1}/{len(stages)} ({bits} bits) " if bits else "")
        self.loss_after = self.mean_loss(targets, None)
        if self.loss_after > self.loss_before:
            log.warning("training raised the task loss on the training samples from %.4g to %.4g; try lower "
                        "learning rates (--lr, --interval-lr) or more samples and epochs", self.loss_before,
                        self.loss_after)
        return self.params

    def mean_loss(self, targets: np.ndarray, bits: int | None, count: int = 1024) -> float:
        """The task loss of the quantized network (the final widths) on the first `count` training samples."""
        forward, index, total = self._quantized_fn(bits), self.chosen[:count], 0.0
        for start in range(0, len(index), 256):
            part = index[start:start + 256]
            out = forward(self.params, {k: self.data.arrays[k][part] for k in self.inputs})[0]
            total += float(self._task_loss(out, jnp.asarray(targets[part]))) * len(part)
        return total / len(index)

    def _stage(self, bits: int | None, targets: np.ndarray, label: str) -> None:
        c = self.config
        ema = isinstance(c, QATConfig) and c.ranges == "ema"
        if ema and self.sim.per_sample:
            raise UnsupportedModelError(f"{self.model.path or 'model'}: EMA ranges need a model with a batch "
                                        "dimension (this one fixes it at 1); use LSQ ranges")
        stats: dict | None = {} if ema else None
        forward = self.sim.function(self.inputs, [self.output], self.quantizers.hooks(bits, stats))
        batch = min(c.batch_size, len(self.chosen))
        per_epoch = len(self.chosen) // batch
        total = per_epoch * c.epochs
        optimizers = {kind: optax.adam(_schedule(c.lr if kind in WEIGHT_KINDS else c.interval_lr, total))
                      for kind in trainable_kinds(c)}
        frozen, trainable = self.params, split(self.params, optimizers, self.quantizers.qil_groups)
        states = {k: optimizers[k].init(v) for k, v in trainable.items()}

        def loss_fn(values, frozen, x, target):
            if stats is not None:
                stats.clear()
            out = forward(merge(frozen, values), x)[0]
            return self._task_loss(out, target), dict(stats or {})

        @jax.jit
        def step(values, states, frozen, x, target):
            (loss, seen), grads = jax.value_and_grad(loss_fn, has_aux=True)(values, frozen, x, target)
            new_values, new_states = {}, {}
            for kind in values:
                updates, new_states[kind] = optimizers[kind].update(grads[kind], states[kind], values[kind])
                new_values[kind] = optax.apply_updates(values[kind], updates)
            return new_values, new_states, loss, seen

        rng = np.random.default_rng(c.seed + (bits or 0))
        for epoch in range(c.epochs):
            bar = Progress(f"{label}epoch {epoch + 1}/{c.epochs}", per_epoch, self.progress)
            order = self.chosen[rng.permutation(len(self.chosen))]
            running = []
            for i in range(per_epoch):
                index = np.sort(order[i * batch:(i + 1) * batch])
                x = {k: self.data.arrays[k][index] for k in self.inputs}
                trainable, states, loss, seen = step(trainable, states, frozen, x, targets[index])
                if ema:
                    frozen = {**frozen, "act": self._ema(frozen["act"], seen)}
                running.append(float(loss))
                self.losses.append(running[-1])
                if i % max(per_epoch // 50, 1) == 0 or i == per_epoch - 1:
                    bar.advance(i + 1 - bar.done, f"loss {np.mean(running[-50:]):.4g}")
                raise_if_interrupted()
            self.params = merge(frozen, trainable)
            note = self._evaluate(bits, f"epoch {epoch + 1}" + (f" at {bits} bits" if bits else ""))
            bar.close(f"loss {np.mean(running):.4g}" + (f", {note}" if note else ""))
            log.info("%sepoch %d: loss %.4g%s", label, epoch + 1, np.mean(running), note and f", {note}")
        self.params = merge(frozen, trainable)

    def _ema(self, act: dict, seen: dict) -> dict:
        """Activation (scale, zero point) from EMA ranges of the batch minima and maxima."""
        m, out = self.config.ema_momentum, dict(act)
        for group, (lo, hi) in seen.items():
            old = self._ranges.get(group)
            lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
            lo, hi = (lo, hi) if old is None else (m * old[0] + (1 - m) * lo, m * old[1] + (1 - m) * hi)
            self._ranges[group] = (lo, hi)
            params = params_from_range(lo, hi, self.model.quant[group].spec, warn=False)
            out[group] = (jnp.float32(params.scale), jnp.float32(params.zero_point))
        return out

    # ---- held-out evaluation ----

    def _evaluate(self, bits: int | None, label: str) -> str:
        """Top-1 of the simulated quantized model on the held-out data (with labels), or its
        agreement with the float model's top-1 (without); "" when there is none."""
        data = self.held_out
        if data is None or self.classes is None:
            return ""
        forward, hits = self._quantized_fn(bits), 0
        for start in range(0, data.count, 256):
            x = {k: data.arrays[k][start:start + 256] for k in self.inputs}
            top = np.asarray(forward(self.params, x)[0]).argmax(axis=1)
            reference = data.labels[start:start + 256] if data.labels is not None else \
                np.asarray(self.float_fn({}, x)[0]).argmax(axis=1)
            hits += int(np.sum(top == reference))
        value = hits / data.count
        self.evaluations.append((label, value))
        return f"held-out {self.metric} {100 * value:.2f}%"

    def _quantized_fn(self, bits: int | None):
        """The jitted quantized network at a stage's widths (traced once per stage, not per epoch)."""
        if bits not in self._eval_fns:
            self._eval_fns[bits] = jax.jit(self.sim.function(self.inputs, [self.output], self.quantizers.hooks(bits)))
        return self._eval_fns[bits]

    @property
    def metric(self) -> str:
        return "top-1" if self.held_out is not None and self.held_out.labels is not None else "agreement"


def _schedule(lr: float, total: int):
    """A 5% linear warm-up, then cosine decay to 0."""
    warmup = max(total // 20, 1)
    return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(total, warmup + 1))


def check_labels(data: Dataset, classes: int | None) -> None:
    """Labels for cross-entropy: present, whole numbers, one per sample, within the model's classes."""
    labels = data.labels
    if labels is None:
        raise CalibrationDataError(f"{data.source}: --labels needs a 'labels' array (one class index per sample) "
                                   "beside the inputs")
    labels = np.asarray(labels)
    if labels.ndim != 1 or not (np.issubdtype(labels.dtype, np.integer) or
                                np.all(np.asarray(labels, np.float64) == np.rint(labels))):
        raise CalibrationDataError(f"{data.source}: 'labels' must be one class index per sample, "
                                   f"got {labels.dtype} of shape {list(labels.shape)}")
    if labels.size and (labels.min() < 0 or (classes is not None and labels.max() >= classes)):
        raise CalibrationDataError(f"{data.source}: 'labels' run from {labels.min()} to {labels.max()}, but the "
                                   f"model has {classes} classes (0..{(classes or 1) - 1})")
