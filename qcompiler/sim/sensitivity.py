"""Per-layer sensitivity to weight quantization: what quantizing one layer's weights alone at each
bit width costs, measured on the output of the block the layer belongs to (BRECQ's block-wise
measure), with pair terms for two layers of one block quantized together, and optionally the
network-level effect (KL of the network's outputs, top-1 agreement and accuracy) on held-out data.

Fisher weighting (the default) turns the block output error into an estimate of the loss it
adds: 0.5 * mean over samples of sum_i g_i^2 * (z_q - z)_i^2, with g the gradient of the
cross-entropy of the float network's outputs, against the labels when the data has them (else
its own top-1 predictions), with respect to the block output z. Without it: the plain squared
error, summed over a sample's elements, averaged over samples.

Everything but the layer under test stays float (activations included), so each number is
that layer's own cost. Results are cached per model, data and settings (`cache_dir`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from qcompiler import __version__
from qcompiler.blocks import Block
from qcompiler.data import Dataset
from qcompiler.evaluation import kl_rows
from qcompiler.files import cache_root, read_cache, write_cache
from qcompiler.ir import Model
from qcompiler.progress import Progress
from qcompiler.quant.maths import fake_quantize, params_from_range
from qcompiler.quant.observers import weight_range
from qcompiler.quant.spec import QuantSpec
from qcompiler.sim.interpreter import Interpreter

log = logging.getLogger(__name__)

FORMAT = "qcompiler-sensitivity/1"


@dataclasses.dataclass
class LayerSensitivity:
    layer: str
    op: str
    weight: str
    block: str
    parameters: int
    block_error: dict[int, float]                    # bits -> block output error (Fisher-weighted: nats)
    network_kl: dict[int, float] | None = None       # bits -> KL(float || this layer quantized), nats
    agreement: dict[int, float] | None = None        # bits -> top-1 agreement with the float network
    accuracy: dict[int, float] | None = None         # bits -> top-1 accuracy (labelled data)


@dataclasses.dataclass
class SensitivityTable:
    """The analysis of one model and data: per layer, and per pair of layers of a block."""

    layers: list[LayerSensitivity]
    choices: tuple[int, ...]
    fisher: bool
    samples: int
    eval_samples: int
    #: "a|b" (layer names) -> {"ba,bb": extra block error of both quantized over the two alone}
    pairs: dict[str, dict[str, float]]
    seconds: float
    float_accuracy: float | None = None
    cached: bool = False

    def layer(self, name: str) -> LayerSensitivity:
        return next(entry for entry in self.layers if entry.layer == name)

    def to_json(self) -> str:
        body = dataclasses.asdict(self)
        body.pop("cached")
        return json.dumps({"format": FORMAT, **body}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> SensitivityTable:
        body = json.loads(text)
        if body.pop("format", None) != FORMAT:
            raise ValueError("not a qcompiler sensitivity table")

        def ints(d):
            return None if d is None else {int(k): float(v) for k, v in d.items()}

        layers = [LayerSensitivity(**{**entry, "block_error": ints(entry["block_error"]),
                                      "network_kl": ints(entry["network_kl"]), "agreement": ints(entry["agreement"]),
                                      "accuracy": ints(entry["accuracy"])}) for entry in body.pop("layers")]
        return cls(layers=layers, **{**body, "choices": tuple(body["choices"])})


@dataclasses.dataclass(frozen=True)
class SensitivityConfig:
    choices: tuple[int, ...] = (2, 4, 8)
    fisher: bool = True
    samples: int = 128        # calibration samples the block errors are measured on
    pairs: bool = True        # intra-block pair terms
    network: bool = True      # network-level KL / agreement / accuracy per layer and bit width
    batch_size: int = 32


def quantized_weight(weight: np.ndarray, spec: QuantSpec) -> np.ndarray:
    lo, hi = weight_range(weight, spec)
    return fake_quantize(weight.astype(np.float32), params_from_range(lo, hi, spec, warn=False), spec)


def cache_dir() -> Path:
    return cache_root() / "sensitivity"


def cache_key(model: Model, data: Dataset, eval_data: Dataset | None, specs: dict, config: SensitivityConfig) -> str:
    digest = hashlib.sha256(repr((__version__, FORMAT, config, sorted((k, repr(v)) for k, v in specs.items()))).encode())
    digest.update(model.to_onnx().SerializeToString(deterministic=True))
    for dataset in (data, eval_data):
        if dataset is not None:
            dataset.update_digest(digest)
    return digest.hexdigest()[:32]


class _Walk:
    """The float network's tensors block by block on one dataset: the inputs each block reads,
    kept only while a later block or the output still needs them."""

    def __init__(self, sim: Interpreter, blocks: list[Block], arrays: dict[str, np.ndarray], batch: int) -> None:
        self.sim, self.blocks, self.batch = sim, blocks, batch
        self.state = {k: v for k, v in arrays.items() if k in sim.graph_inputs}
        later = set(sim.graph_outputs)
        self.needed_after = []
        for block in reversed(blocks):
            self.needed_after.insert(0, set(later))
            later |= set(block.inputs)
        self.logits = _map(jax.jit(sim.function(sim.graph_inputs, sim.graph_outputs[:1])), {},
                           {k: self.state[k] for k in sim.graph_inputs}, batch)[0]

    def advance(self, index: int, outputs: dict[str, np.ndarray]) -> None:
        self.state.update(outputs)
        self.state = {k: v for k, v in self.state.items() if k in self.needed_after[index]}

    def rest(self, index: int, block: Block) -> list[str]:
        """The tensors besides the block's outputs that the network's output needs after it."""
        return sorted(n for n in self.needed_after[index] - set(block.outputs) if n in self.state)


def analyze(model: Model, layers: dict[str, tuple[str, str, int]], blocks: list[Block], data: Dataset,
            spec_at: Callable[[str, int, int], QuantSpec], config: SensitivityConfig | None = None,
            eval_data: Dataset | None = None, progress: bool = True, use_cache: bool = True) -> SensitivityTable:
    """Sensitivities of `layers` (layer name -> (weight tensor, op, output-channel axis)) of the
    float, BN-folded `model`, grouped by `blocks` (partition-blocks), each weight quantized with
    `spec_at(layer, bits, axis)` (QuantConfig.layer_spec_at)."""
    config = config or SensitivityConfig()
    data = data.head(min(config.samples, data.count))
    specs = {(name, bits): spec_at(name, bits, axis) for name, (_, _, axis) in layers.items() for bits in config.choices}
    key = cache_key(model, data, eval_data, {**layers, **{f"{n}@{b}": s for (n, b), s in specs.items()}}, config)
    path = cache_dir() / f"{key}.json"
    table = read_cache(path, SensitivityTable.from_json) if use_cache else None
    if table is not None:
        table.cached = True
        log.info("sensitivity: read from the cache %s", path)
        return table
    start = time.perf_counter()
    sim = Interpreter(model)
    weights = {w: np.asarray(model.const_value(model.tensor(w)), np.float32) for w, _, _ in layers.values()}
    quantized = {(name, bits): quantized_weight(weights[layers[name][0]], spec) for (name, bits), spec in specs.items()}
    in_block = {layer: block for block in blocks for layer in block.layers if layer in layers}
    entries = {name: LayerSensitivity(name, op, w, in_block[name].name if name in in_block else "",
                                      int(weights[w].size), {}) for name, (w, op, _) in layers.items()}
    pairs: dict[str, dict[str, float]] = {}
    bar = Progress("sensitivity", len(blocks), enabled=progress)
    walk = _Walk(sim, blocks, data.arrays, config.batch_size)
    labels = data.labels if data.labels is not None else np.argmax(_rows(walk.logits), axis=-1)
    for index, block in enumerate(blocks):
        measured = [name for name in block.layers if name in layers]
        block_fn = jax.jit(sim.function(block.inputs, block.outputs))
        feeds = {n: walk.state[n] for n in block.inputs}
        reference = _map(block_fn, {}, feeds, config.batch_size)
        fisher = _fisher(sim, walk, index, block, reference, labels, config.batch_size) if config.fisher else None

        def error(replaced: dict[str, np.ndarray]) -> float:
            outs = _map(block_fn, {"weights": replaced}, feeds, config.batch_size)
            return _weighted_error(outs, reference, fisher)

        for name in measured:
            w = layers[name][0]
            for bits in config.choices:
                entries[name].block_error[bits] = error({w: quantized[(name, bits)]})
        if config.pairs:
            for i, a in enumerate(measured):
                for b in measured[i + 1:]:
                    wa, wb = layers[a][0], layers[b][0]
                    pairs[f"{a}|{b}"] = {
                        f"{ba},{bb}": error({wa: quantized[(a, ba)], wb: quantized[(b, bb)]})
                        - entries[a].block_error[ba] - entries[b].block_error[bb]
                        for ba in config.choices for bb in config.choices}
        walk.advance(index, dict(zip(block.outputs, reference)))
        bar.advance()
    bar.close()
    float_accuracy = None
    held = eval_data if eval_data is not None else data
    if config.network:
        float_accuracy = _network_effects(sim, blocks, held, layers, quantized, entries, config, progress)
    table = SensitivityTable(list(entries.values()), tuple(config.choices), config.fisher, data.count, held.count,
                             pairs, time.perf_counter() - start, float_accuracy)
    if use_cache:
        write_cache(path, table.to_json())
    return table


def _fisher(sim: Interpreter, walk: _Walk, index: int, block: Block, outputs, labels, batch: int):
    """Per sample and element, the squared gradient of the float network's cross-entropy with
    respect to the block's outputs (the empirical Fisher diagonal)."""
    names, rest = list(block.outputs), walk.rest(index, block)
    tail = sim.function(names + rest, sim.graph_outputs[:1])

    def loss(outs, feeds, label):
        logits = tail({}, {**dict(zip(names, outs)), **feeds})[0]
        logp = jax.nn.log_softmax(logits.reshape(len(label), -1), axis=-1)
        return -jnp.sum(jnp.take_along_axis(logp, label[:, None], axis=-1))

    @jax.jit
    def squared(_params, feeds):
        outs = tuple(feeds[n] for n in names)
        grads = jax.grad(loss)(outs, {n: feeds[n] for n in rest}, feeds["<labels>"])
        return tuple(g * g for g in grads)

    feeds = {**dict(zip(names, outputs)), **{n: walk.state[n] for n in rest},
             "<labels>": np.asarray(labels).astype(np.int32)}
    return _map(squared, {}, feeds, batch)


def _weighted_error(outs, reference, fisher) -> float:
    total = 0.0
    for i, (out, ref) in enumerate(zip(outs, reference)):
        diff = (np.asarray(out, np.float64) - ref) ** 2
        total += float((0.5 * np.asarray(fisher[i]) * diff if fisher is not None else diff).reshape(len(diff), -1)
                       .sum(axis=1).mean())
    return total


def _network_effects(sim, blocks, held: Dataset, layers, quantized, entries, config, progress) -> float | None:
    """KL(float || one layer quantized) of the network output, top-1 agreement and accuracy, on
    `held`: the block with the layer's quantized weight, then the float rest of the network."""
    walk = _Walk(sim, blocks, held.arrays, config.batch_size)
    float_top = np.argmax(_rows(walk.logits), axis=-1)   # logits may be [N, classes, 1, 1]
    bar = Progress("network effect", sum(len(b.layers) for b in blocks) * len(config.choices), enabled=progress)
    for index, block in enumerate(blocks):
        names, rest = list(block.outputs), walk.rest(index, block)
        block_fn = jax.jit(sim.function(block.inputs, names))
        tail = jax.jit(sim.function(names + rest, sim.graph_outputs[:1]))
        feeds = {n: walk.state[n] for n in block.inputs}
        for name in (n for n in block.layers if n in layers):
            entry = entries[name]
            entry.network_kl, entry.agreement = {}, {}
            entry.accuracy = {} if held.labels is not None else None
            for bits in config.choices:
                outs = _map(block_fn, {"weights": {layers[name][0]: quantized[(name, bits)]}}, feeds, config.batch_size)
                logits = _map(tail, {}, {**dict(zip(names, outs)), **{n: walk.state[n] for n in rest}},
                              config.batch_size)[0]
                entry.network_kl[bits] = float(np.mean(kl_rows(_rows(walk.logits), _rows(logits))))
                top = np.argmax(_rows(logits), axis=-1)
                entry.agreement[bits] = float(np.mean(top == float_top))
                if held.labels is not None:
                    entry.accuracy[bits] = float(np.mean(top == held.labels))
                bar.advance()
        walk.advance(index, dict(zip(names, _map(block_fn, {}, feeds, config.batch_size))))
    bar.close()
    return None if held.labels is None else float(np.mean(float_top == held.labels))


def _rows(x) -> np.ndarray:
    return np.asarray(x, np.float64).reshape(len(x), -1)


def _map(fn, params: dict, inputs: dict[str, np.ndarray], batch: int) -> tuple:
    """fn(params, batch) over all samples, each output concatenated over the batches."""
    count = len(next(iter(inputs.values())))
    parts = [fn(params, {k: v[i:i + batch] for k, v in inputs.items()}) for i in range(0, count, batch)]
    return tuple(np.concatenate([np.asarray(p[j]) for p in parts]) for j in range(len(parts[0])))
