"""The state BRECQ reconstruction carries through a network's blocks (see
qcompiler.passes.reconstruct_blocks): the simulator, the parameters learned so far, and two
caches of the tensors live between blocks, as the float and the quantized network compute them.
Before the first block it prints an estimate of the whole run's time (qcompiler.sim.estimate);
convolutional blocks may train on random spatial crops of their samples (qcompiler.sim.crops)."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from qcompiler.blocks import Block, BlockReport, ReconstructConfig
from qcompiler.data import Dataset, sample_bytes
from qcompiler.errors import PassError
from qcompiler.ir import Model
from qcompiler.sim.crop_reach import block_reach
from qcompiler.sim.crops import Crops, plan_crops
from qcompiler.sim.estimate import estimate
from qcompiler.sim.interpreter import Interpreter
from qcompiler.sim.quantized import QuantState, nearest_rounding, quant_hooks, quant_params, quantized_biases
from qcompiler.sim.reconstruction import BlockProblem, Phase, block_loss, initial_rounding, learn, merge_learned

log = logging.getLogger(__name__)


class Reconstruction:
    """The state carried through the blocks: simulator, parameters, float and quantized caches."""

    def __init__(self, model: Model, blocks: list[Block], data: Dataset, config: ReconstructConfig,
                 progress: bool) -> None:
        self.model, self.blocks, self.config, self.progress = model, blocks, config, progress
        self.sim = Interpreter(model)
        self.params = quant_params(model)
        self.reports: list[BlockReport] = []
        later: set[str] = set(self.sim.graph_outputs)
        self.needed_after: list[set[str]] = []
        for block in reversed(blocks):
            self.needed_after.insert(0, set(later))
            later |= set(block.inputs)
        self.cache_bytes = 0
        arrays = self._samples(data)
        self.fp_state, self.q_state = dict(arrays), dict(arrays)
        self.crops = [self._crops(block) for block in blocks]
        self.estimate = None
        self.fp_logits = self.held_reference = self.reference_seconds = None
        if config.fisher or self.held_rows is not None:
            names = self.sim.graph_outputs
            full = jax.jit(self.sim.function(self.sim.graph_inputs, names))
            float_outputs = lambda x: _map(lambda p, b: dict(zip(names, full(p, b))), self.params, x)  # noqa: E731
            # Fisher needs the float logits of every sample, the guard the outputs of the held-out ones
            self.fp_logits = float_outputs(arrays)[names[0]] if config.fisher else None
            if self.held_rows is not None:
                start = time.perf_counter()
                self.held_reference = float_outputs(_rows(arrays, self.held_rows))
                self.reference_seconds = time.perf_counter() - start  # the estimate scales the guard from it

    def _samples(self, data: Dataset) -> dict[str, np.ndarray]:
        """At most `samples` calibration samples (a seeded random subset), fewer if the caches would
        outgrow `cache_bytes`."""
        # float and quantized caches and Fisher weights of the tensors live around each block
        per_sample = max((3 * sample_bytes(self.model, set(block.inputs) | set(block.outputs) | after)
                          for block, after in zip(self.blocks, self.needed_after)), default=0)
        count = min(self.config.samples, data.count, max(self.config.cache_bytes // max(per_sample, 1), 1))
        if count < min(self.config.samples, data.count):
            log.warning("reconstruction caches: %d samples fit %d MiB (of %d asked for)", count,
                        self.config.cache_bytes >> 20, min(self.config.samples, data.count))
        self.cache_bytes = count * per_sample
        chosen = np.sort(np.random.default_rng(self.config.seed).permutation(data.count)[:count])
        self.fit_rows, self.held_rows = _held_out_split(chosen, data.count, self.config.holdout)
        return {name: np.asarray(values)[chosen] for name, values in data.arrays.items()
                if name in self.sim.graph_inputs}

    def _crops(self, block: Block) -> Crops | None:
        """The block's crops (config.crop), for blocks whose inputs are all images of one size."""
        tensors = self.model.tensors()
        shapes = {tuple(tensors[n].shape or ()) for n in block.inputs}
        sizes = {shape[2:] for shape in shapes}
        if self.config.crop is None or len(sizes) != 1 or any(len(shape) != 4 for shape in shapes):
            return None
        size = sizes.pop()
        if not all(isinstance(d, int) and d > 0 for d in size):
            return None
        reach = block_reach(self.sim.steps_between(block.inputs, block.outputs), block.inputs, block.outputs,
                            self.sim.constants)
        return plan_crops(reach, list(block.outputs), size, self.config.crop)

    def all_blocks(self) -> dict:
        if self.config.iters or self.config.act_iters:
            self.estimate = estimate(self)
            log.info("%s", self.estimate.line(len(self.blocks)))
            if self.progress:
                print(self.estimate.line(len(self.blocks)), file=sys.stderr, flush=True)
        for index, block in enumerate(self.blocks):
            self._reconstruct(index, block)
        return self.params

    def _owned(self, block: Block) -> set[str]:
        """The quantizers a block learns: its weights and biases, the activations it produces, and
        graph inputs it reads."""
        nodes = {n.name: n for n in self.model.graph.nodes if n.name in set(block.nodes)}
        owned = {t.name for n in nodes.values() for t in n.outputs}
        owned |= {t.name for n in nodes.values() for t in n.inputs if self.model.const_value(t) is not None}
        return owned | (set(block.inputs) & set(self.sim.graph_inputs))

    def _learned_weights(self, owned: set[str]) -> list[str]:
        """The quantized weights among a block's quantizers: those AdaRound learns, in a fixed order."""
        return sorted(w for w in owned if w in self.params["weight_q"])

    def _problem(self, block: Block, owned: set[str], state: QuantState, targets, fisher) -> BlockProblem:
        """The block's problem on the samples it trains on (all but the held-out ones)."""
        forward = self.sim.function(block.inputs, block.outputs, quant_hooks(self.model, state, owned))
        rows, crops = self.fit_rows, self.crops[self.blocks.index(block)]
        return BlockProblem(forward, _rows(_pick(self.q_state, block.inputs), rows), _rows(targets, rows),
                            None if fisher is None else _rows(fisher, rows), crops)

    def _phase(self, label: str, iters: int, rounding: bool, steps: bool) -> Phase:
        c = self.config
        return Phase(label, iters, rounding, steps, c.lr, c.act_lr, c.reg_weight, c.beta, c.warmup, c.batch_size,
                     c.bias_lr)

    def _biases(self, owned: set[str]) -> dict:
        """The current values of the biases of the block's quantized layers, learned with its rounding
        and its step sizes when c.bias_lr > 0 (else none)."""
        if not self.config.bias_lr:
            return {}
        tensors = self.model.tensors()
        return {b: self.params["weights"].get(b, jnp.asarray(self.model.const_value(tensors[b]), jnp.float32))
                for _, _, b in quantized_biases(self.model) if b in owned}

    def _reconstruct(self, index: int, block: Block) -> None:
        start, c = time.perf_counter(), self.config
        owned = self._owned(block)
        fp_block = jax.jit(self.sim.function(block.inputs, block.outputs))
        targets = _map(lambda p, x: dict(zip(block.outputs, fp_block(p, x))), self.params,
                       _pick(self.fp_state, block.inputs))
        fisher = self._fisher(index, block, owned) if c.fisher else None
        final = self._problem(block, owned, QuantState("hard", True), targets, fisher)
        loss_nearest = block_loss(final, self.params)
        guard = None if self.held_rows is None else _Guard(self._held_out_error(index, block, owned), self.params)
        weights = self._learned_weights(owned)
        groups = sorted({self.model.quant[t].group or t for t in owned
                         if t in self.model.quant and self.model.quant[t].role == "activation"})
        steps = {g: self.params["act"][g][0] for g in groups if g in self.params["act"]}
        rounding = initial_rounding(self.params, self.model.quant, weights) if weights and c.iters else {}
        biases = self._biases(owned)
        tag, curve = f"{block.name} ({index + 1}/{len(self.blocks)})", []
        if c.qdrop > 0:
            learned = {k: v for k, v in (("rounding", rounding), ("steps", steps), ("bias", biases)) if v}
            phase = self._phase(f"{tag} rounding+steps, QDrop {c.qdrop}", c.iters, bool(rounding), bool(steps))
            problem = self._problem(block, owned, QuantState("soft", True, c.qdrop), targets, fisher)
            curve = self._learn(problem, learned, phase, index, guard) if learned and c.iters else []
        else:
            if rounding:
                problem = self._problem(block, owned, QuantState("soft", False), targets, fisher)
                curve = self._learn(problem, {"rounding": rounding, **({"bias": biases} if biases else {})},
                                    self._phase(f"{tag} rounding", c.iters, True, False), index, guard)
            if steps and c.act_iters:
                extra = {"bias": self._biases(owned)} if biases else {}   # as the rounding phase left them
                curve += self._learn(final, {"steps": steps, **extra},
                                     self._phase(f"{tag} steps", c.act_iters, False, True), index, guard)
        loss_learned = block_loss(final, self.params)
        q_block = jax.jit(final.forward)
        outputs = _map(lambda p, x: dict(zip(block.outputs, q_block(p, x))), self.params,
                       _pick(self.q_state, block.inputs))
        self.fp_state.update(targets)
        self.q_state.update(outputs)
        keep = self.needed_after[index]
        self.fp_state = {k: v for k, v in self.fp_state.items() if k in keep}
        self.q_state = {k: v for k, v in self.q_state.items() if k in keep}
        held = (None, None, ()) if guard is None else (guard.nearest, guard.loss, tuple(guard.dropped))
        self.reports.append(BlockReport(block, loss_nearest, loss_learned, time.perf_counter() - start, curve, *held))
        log.info("%s: loss %.4g with nearest rounding -> %.4g learned", tag, loss_nearest, loss_learned)

    def _learn(self, problem: BlockProblem, learned: dict, phase: Phase, index: int,
               guard: _Guard | None) -> list[float]:
        learned, curve = learn(problem, self.params, learned, phase, self.config.seed + index, self.progress)
        merged = merge_learned(self.params, learned)
        self.params = merged if guard is None else guard.keep(self.params, merged, phase)
        return curve

    def _through_rest(self, index: int, block: Block, owned: set[str], graph_outputs: list[str]):
        """(block function, the quantized rest of the network from the block's outputs and the other
        live tensors to `graph_outputs`, those other tensors' names)."""
        outputs = list(block.outputs)
        others = sorted(n for n in self.needed_after[index] - set(outputs) if n in self.q_state)
        block_fn = self.sim.function(block.inputs, outputs, quant_hooks(self.model, QuantState("hard", True), owned))
        tail = self.sim.function(outputs + others, graph_outputs, quant_hooks(self.model, QuantState("hard", True)))
        return block_fn, tail, others

    def _held_out_error(self, index: int, block: Block, owned: set[str]):
        """params -> the network's output error on the held-out samples, the block computed with
        `params` from its quantized inputs and the rest of the network quantized after it, against
        the float network, mean over samples: the squared error summed over outputs and elements,
        or (holdout_metric "kl") the KL divergence of the first output's softmax."""
        kl = self.config.holdout_metric == "kl"
        names = self.sim.graph_outputs[:1] if kl else self.sim.graph_outputs
        block_fn, tail, others = self._through_rest(index, block, owned, names)

        def distance(quantized, reference):
            return _softmax_kl(reference, quantized) if kl else jnp.sum(jnp.square(quantized - reference))

        @jax.jit
        def error(params, feeds):
            outs = dict(zip(block.outputs, block_fn(params, {n: feeds[n] for n in block.inputs})))
            final = tail(params, {**outs, **{n: feeds[n] for n in others}})
            return jnp.stack([distance(f, feeds[f"<float {n}>"]) for n, f in zip(names, final)]).sum()[None]

        feeds = {**_rows(_pick(self.q_state, list(block.inputs) + others), self.held_rows),
                 **{f"<float {n}>": self.held_reference[n] for n in names}}
        # the block's roundings and biases present from the start: the phases add none, so `error`
        # compiles once per block (per batch shape), not once per phase (most of the guard's time)
        weights = self._learned_weights(owned)
        nearest, biases = nearest_rounding(self.params, self.model.quant, weights), self._biases(owned)

        def fixed(params: dict) -> dict:
            return {**params, "rounding": {**nearest, **params["rounding"]},
                    "weights": {**biases, **params["weights"]}}

        return lambda params: float(np.sum(_map(error, fixed(params), feeds, self.config.batch_size))) / len(self.held_rows)

    def _fisher(self, index: int, block: Block, owned: set[str]) -> dict[str, np.ndarray]:
        """|d KL(float || quantized network outputs) / d block output| + 1 per element (the BRECQ
        code's weighting), through the quantized rest of the network, in batches of batch_size."""
        outputs = list(block.outputs)
        block_fn, tail, others = self._through_rest(index, block, owned, self.sim.graph_outputs[:1])

        def kl(outs, params, rest, fp_logits):
            logits = tail(params, {**dict(zip(outputs, outs)), **rest})[0]
            return _softmax_kl(fp_logits, logits) / len(logits)

        @jax.jit
        def grads(params, feeds):
            outs = tuple(block_fn(params, {n: feeds[n] for n in block.inputs}))
            g = jax.grad(kl)(outs, params, {n: feeds[n] for n in others}, feeds["<fp logits>"])
            return {n: jnp.abs(v) + 1.0 for n, v in zip(outputs, g)}

        feeds = {**_pick(self.q_state, list(block.inputs) + others), "<fp logits>": self.fp_logits}
        return _map(grads, self.params, feeds, self.config.batch_size)


def _softmax_kl(reference, logits):
    """KL(softmax(reference) || softmax(logits)) over the last axis, summed over the rest."""
    p = jax.nn.softmax(reference, axis=-1)
    return jnp.sum(p * (jnp.log(jnp.maximum(p, 1e-30)) - jax.nn.log_softmax(logits, axis=-1)))


class _Guard:
    """The held-out guard of one block: a phase's result is kept only where it does not raise the
    network's output error on the held-out samples (ReconstructConfig.holdout). The block's own
    error there fell with phases that raised the network's (the ImageNet MobileNetV2; docs/brecq.md)."""

    def __init__(self, error: Callable[[dict], float], params: dict) -> None:
        self.error = error
        self.nearest = self.loss = error(params)
        self.dropped: list[str] = []

    def keep(self, before: dict, after: dict, phase: Phase) -> dict:
        loss = self.error(after)
        if loss > self.loss:
            log.info("%s: dropped, held-out error %.4g -> %.4g", phase.label, self.loss, loss)
            self.dropped.append("+".join(k for k, on in (("rounding", phase.rounding), ("steps", phase.steps)) if on))
            return before
        self.loss = loss
        return after


def _held_out_split(chosen: np.ndarray, count: int, share: float) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Rows of the cached samples (file positions `chosen`) trained on and held out: those in the
    last `share` of the file; (None, None) without a guard. Both must be non-empty."""
    if not share:
        return None, None
    held = chosen >= count - round(share * count)
    if held.all() or not held.any():
        raise PassError(f"reconstruction: holding out {share:.0%} of {count} calibration samples leaves "
                        f"{int(held.sum())} of the {len(chosen)} cached ones held out: give more samples or another share")
    return np.flatnonzero(~held), np.flatnonzero(held)


def _rows(arrays: dict[str, np.ndarray], rows: np.ndarray | None) -> dict[str, np.ndarray]:
    return arrays if rows is None else {k: v[rows] for k, v in arrays.items()}


def _pick(state: dict[str, np.ndarray], names) -> dict[str, np.ndarray]:
    return {n: state[n] for n in names}


def _map(fn, params: dict, inputs: dict[str, np.ndarray], batch: int = 256):
    """fn(params, batch of inputs) over all samples, concatenated (a dict or one array)."""
    count = len(next(iter(inputs.values())))
    parts = [fn(params, {k: v[i:i + batch] for k, v in inputs.items()}) for i in range(0, count, batch)]
    if isinstance(parts[0], dict):
        return {k: np.concatenate([np.asarray(p[k]) for p in parts]) for k in parts[0]}
    return np.concatenate([np.asarray(p) for p in parts])
