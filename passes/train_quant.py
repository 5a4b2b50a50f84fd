"""train-quant: quantization-aware training of an annotated, calibrated model, by QIL's learned
intervals (Jung et al. 2019) or the whitepaper's fake-quant fine-tuning (QAT); see
qcompiler.sim.training for the loop and qcompiler.sim.quantizers for the quantizers.

What was trained is written back as ordinary annotations, so that insert-qdq exports exactly
the trained network:
- QIL weights: their integer codes (`rounded`) with symmetric per-channel scales (c + d) / levels;
  the trained float weights replace the initializers (the report draws them);
- QIL activations: scale 2d / levels, zero point 0, and the pruning shift c - d subtracted from the
  bias of the layer that produces them;
- QAT: the fine-tuned float weights (insert-qdq rounds them at their calibrated scales) and the
  learned or EMA-tracked activation scales and zero points.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from qcompiler.data import Dataset
from qcompiler.errors import PassError
from qcompiler.ir import Model
from qcompiler.pass_infra import Pass, PassResult
from qcompiler.quant.spec import QuantParams
from qcompiler.registry import register
from qcompiler.training import (MEASURED_SAMPLES, ActivationInterval, LayerInterval, QILConfig, TrainConfig,
                                TrainReport)


@register("train-quant")
class TrainQuant(Pass):
    """Train the quantized network with the task loss (see the module docstring)."""

    def __init__(self, data: Dataset | None = None, config: TrainConfig | None = None,
                 held_out: Dataset | None = None, progress: bool = True) -> None:
        self.data, self.config, self.held_out, self.progress = data, config or QILConfig(), held_out, progress
        self.report: TrainReport | None = None
        self.trained: tuple | None = None  # (quantizers, params) of the last run, for inspection

    def requires(self, model: Model) -> None:
        if model.quant and self.data is None:
            raise PassError("train-quant needs training data: TrainQuant(data=...)")
        if any(tq.params is None for tq in model.quant.values()):
            raise PassError("train-quant: run calibrate-ranges first (some tensors have no params)")

    def call(self, model: Model) -> PassResult:
        if not model.quant:
            return PassResult(model, False)
        from qcompiler.sim.training import Training  # jax loads only when a model is trained

        start = time.perf_counter()
        run = Training(model, self.config, self.data, self.held_out, self.progress)
        params = run.run()
        quantizers = run.quantizers
        self.trained = (quantizers, params)
        shares = activation_shares(run, params)
        write_back(model, quantizers, params)
        self.report = TrainReport(self.config.describe(), list(self.config.progressive), run.losses, run.evaluations,
                                  run.metric, intervals(model, quantizers, params), activation_intervals(
                                      model, quantizers, params, shares), time.perf_counter() - start,
                                  len(run.chosen), run.loss_before, run.loss_after)
        model.analysis[self.name] = self.report
        return PassResult(model, True)


def write_back(model: Model, quantizers, params: dict) -> None:
    """The trained values onto the model's initializers and annotations (see the module docstring)."""
    tensors = model.tensors()
    for name, tq in list(model.quant.items()):
        if tq.role == "weight":
            tensors[name].values = np.asarray(params["weights"][name], np.float32).reshape(tensors[name].shape)
            if quantizers.method == "qil":
                model.quant[name] = _qil_weight(name, tq, params, quantizers)
    for bias, group in quantizers.shifts.items():
        shift = float(quantizers.activation_shift(params, group))
        tensors[bias].values = (model.const_value(tensors[bias]) - np.float32(shift)).astype(np.float32)
    for name, tq in list(model.quant.items()):
        if tq.role != "activation":
            continue
        group = tq.group or name
        if group in quantizers.qil_groups:
            scale = np.asarray(quantizers.act_scale(params, group, None), np.float32)
            zero = np.zeros_like(tq.params.zero_point)
        else:
            scale, zero = (np.asarray(v) for v in params["act"][group])
            zero = np.rint(zero).astype(tq.params.zero_point.dtype)
        model.quant[name] = tq.with_params(QuantParams(scale=scale.reshape(tq.params.scale.shape),
                                                       zero_point=zero.reshape(tq.params.zero_point.shape)))


def _qil_weight(name: str, tq, params: dict, quantizers):
    """A QIL weight's annotation: symmetric codes (ternary at 2 bits) at scale (c + d) / levels."""
    from qcompiler.sim import qil

    c, d = quantizers.weight_interval(params, name)
    spec = dataclasses.replace(tq.spec, symmetric=True, narrow=True)
    codes = qil.weight_codes(params["weights"][name], c, d, params["qil_gamma"][name], spec.bits, spec.axis)
    scale = np.asarray(qil.weight_scale(c, d, spec.bits), np.float32).reshape(tq.params.scale.shape)
    return dataclasses.replace(tq, spec=spec, params=QuantParams(scale=scale, zero_point=np.zeros(
        scale.shape, np.int32)), rounded=np.asarray(codes).astype(np.int32))


def intervals(model: Model, quantizers, params: dict) -> list[LayerInterval]:
    """Each weight's mean interval, gamma and pruned/clipped fractions (QIL), for the report."""
    from qcompiler.sim import qil

    out = []
    if quantizers.method != "qil":
        return out
    for name, tq in model.quant.items():
        if tq.role == "weight":
            c, d = (np.asarray(v) for v in quantizers.weight_interval(params, name))
            w = np.asarray(params["weights"][name])
            pruned, clipped = qil.pruned_fraction(w, c, d, tq.spec.axis)
            out.append(LayerInterval(name, tq.layer, tq.spec.bits, float(np.mean(c)), float(np.mean(d)),
                                     float(params["qil_gamma"][name]), pruned, clipped))
    return out


def activation_intervals(model: Model, quantizers, params: dict,
                         shares: dict[str, tuple[float, float, float]] | None = None) -> list[ActivationInterval]:
    """Each QIL activation's interval [c - d, c + d] in the units of the tensor before the shift,
    with its (zeros, pruned, clipped) shares from `activation_shares` (0 where not measured)."""
    shifts = {group: float(quantizers.activation_shift(params, group)) for group in quantizers.shifts.values()}
    out = []
    for group in [g for g in quantizers.groups if g in quantizers.qil_groups]:  # graph order
        d = float(quantizers.activation_distance(params, group))
        low = shifts.get(group, 0.0)
        zeros, pruned, clipped = (shares or {}).get(group, (0.0, 0.0, 0.0))
        out.append(ActivationInterval(group, model.quant[group].spec.bits, low, low + 2 * d, pruned, clipped, zeros))
    return out


def activation_shares(run, params: dict, count: int = MEASURED_SAMPLES) -> dict[str, tuple[float, float, float]]:
    """QIL activation group -> the shares of its values (y: the float activation before its
    quantizer, in the units before the shift) that are <= 0 already (a ReLU's zeros), that the
    learned threshold prunes (0 < y <= c - d: mapped to 0 by the interval but not by the float
    network) and that it clips (y > c + d). Measured with the trained weights and intervals (the
    whole quantized network, as trained) in one forward pass over the first `count` training
    samples, 256 at a time (one at a time for a model that fixes its batch at 1).

    Where c - d was folded into the producing layer's bias, the tensor the quantizer sees is
    x = y - (c - d) (through the ReLU: relu(z - (c - d)), with y = relu(z)), so there the
    interval maps x <= 0 to 0 and clips x > 2d; the float network's zeros (z <= 0) are counted on
    the producing layer's own output, z - (c - d) <= -(c - d). Unshifted groups have c - d = 0:
    nothing is pruned beyond their zeros."""
    import jax
    import jax.numpy as jnp

    quantizers = run.quantizers
    if not quantizers.qil_groups:
        return {}
    hooks, seen = quantizers.hooks(), {}

    def tap(hook, group: str, counter):
        def counted(x, p):
            totals = seen.get(group, {})
            for key, value in counter(x, p).items():
                totals[key] = totals.get(key, 0) + value
            seen[group] = totals
            return hook(x, p) if hook is not None else x

        return counted

    producers = {node.inputs[2].name: node.outputs[0].name for node in run.model.graph.nodes
                 if len(node.inputs) > 2 and node.inputs[2].name in quantizers.shifts}
    for group in quantizers.qil_groups:
        for name in quantizers.groups[group]:
            hooks[name] = tap(hooks.get(name), group, lambda x, p, g=group: {
                "size": x.size, "zero": jnp.sum(x <= 0),
                "above": jnp.sum(x > 2 * quantizers.activation_distance(p, g))})
    for bias, group in quantizers.shifts.items():
        hooks[producers[bias]] = tap(hooks.get(producers[bias]), group, lambda x, p, g=group: {
            "float_zero": jnp.sum(x <= -quantizers.activation_shift(p, g))})
    forward = run.sim.function(run.inputs, [run.output], hooks)

    def counts(p, feeds):
        seen.clear()
        forward(p, feeds)
        return {group: dict(totals) for group, totals in seen.items()}

    counts, totals = jax.jit(counts), {}
    index, batch = run.chosen[:count], 1 if run.sim.per_sample else 256
    for start in range(0, len(index), batch):
        part = index[start:start + batch]
        for group, values in counts(params, {k: run.data.arrays[k][part] for k in run.inputs}).items():
            into = totals.setdefault(group, {})
            for key, value in values.items():
                into[key] = into.get(key, 0) + int(value)
    out = {}
    for group, t in totals.items():
        size = max(t["size"], 1)
        zeros = t.get("float_zero", t["zero"])  # unshifted: the interval maps exactly the zeros to 0
        out[group] = (zeros / size, max(t["zero"] - zeros, 0) / size, t["above"] / size)
    return out
