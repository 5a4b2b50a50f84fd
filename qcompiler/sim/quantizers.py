"""The quantizers that training learns, as simulator hooks: QIL's intervals or the whitepaper's
fake quantization (QAT), over one annotated, calibrated model.

    params = {"weights", "weight_q", "act"  (as qcompiler.sim.quantized),
              "qil_w": {weight: (c, d) per channel}, "qil_gamma": {weight: gamma},
              "qil_a": {group: d}, "qil_t": {group: pruning shift, folded into a bias},
              "qil_units": {weight or group: the starting d}}

Intervals are learned relative to where they start (c = units * qil_w[..][0], and so on), so
that one learning rate moves a 0.01-wide weight interval and a 5-wide activation interval alike.

`TrainedQuantizers` knows which tensor gets which quantizer; `hooks(bits)` builds them for one
stage of a progressive schedule (bits: the width of the QIL tensors in that stage).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from qcompiler.quant.maths import INT32_LIMIT
from qcompiler.sim import qil
from qcompiler.sim.fake_quant import fake_quant
from qcompiler.sim.interpreter import Hook
from qcompiler.sim.quantized import quant_params, quantized_biases

#: Layers whose bias can absorb the pruning shift of the activation they produce.
SHIFT_LAYERS = ("Conv", "Gemm")


def activation_groups(model) -> dict[str, list[str]]:
    """Activation group -> its member tensors (a group shares one scale and zero point)."""
    groups: dict[str, list[str]] = {}
    for name, tq in model.quant.items():
        if tq.role == "activation":
            groups.setdefault(tq.group or name, []).append(name)
    return groups


def interval_groups(model, groups: dict[str, list[str]]) -> set[str]:
    """The activation groups QIL's interval applies to: unsigned with zero point 0 (a ReLU's output).
    Others (signed ranges, e.g. a residual branch before its Add) learn their step size (LSQ)."""
    out = set()
    for group, members in groups.items():
        tqs = [model.quant[m] for m in members]
        if all(not tq.spec.signed and np.all(tq.params.zero_point == 0) for tq in tqs):
            out.add(group)
    return out


def shift_biases(model, qil_groups: set[str], groups: dict[str, list[str]]) -> dict[str, str]:
    """Bias -> the QIL activation group whose pruning shift it absorbs: a Conv or Gemm whose
    quantized output is that group's only member, directly or through a Relu, and used nowhere else."""
    quantized = {bias for _, _, bias in quantized_biases(model)}
    out = {}
    for node in model.graph.nodes:
        bias = model.input_or_none(node, 2) if node.op in SHIFT_LAYERS else None
        if bias is None or bias.name not in quantized or len(model.consumers(bias)) != 1:
            continue
        target, readers = node.outputs[0], model.consumers(node.outputs[0])
        if target.name not in model.quant and len(readers) == 1 and readers[0].op == "Relu" \
                and not model.is_graph_output(target):
            target = readers[0].outputs[0]
        tq = model.quant.get(target.name)
        group = None if tq is None or tq.role != "activation" else (tq.group or target.name)
        if group in qil_groups and groups[group] == [target.name] and not model.is_graph_output(target):
            out[bias.name] = group
    return out


class TrainedQuantizers:
    """Which quantizer each tensor of `model` gets under `method` ("qil" or "qat"), their initial
    parameters, and their hooks."""

    def __init__(self, model, method: str, gamma: float = 1.0) -> None:
        self.model, self.method = model, method
        self.groups = activation_groups(model)
        self.qil_groups = interval_groups(model, self.groups) if method == "qil" else set()
        self.shifts = shift_biases(model, self.qil_groups, self.groups) if method == "qil" else {}
        self.biases = quantized_biases(model)
        self.gamma = gamma

    def initial_params(self) -> dict:
        params = quant_params(self.model)
        if self.method != "qil":
            return params
        qil_w, qil_gamma, units = {}, {}, {}
        for name, tq in self.model.quant.items():
            if tq.role == "weight":
                w = np.asarray(params["weights"][name])
                units[name] = jnp.asarray(qil.initial_weight_interval(w, tq.spec.bits, tq.spec.axis)[1])
                qil_w[name] = (jnp.ones_like(units[name]), jnp.ones_like(units[name]))  # c = d: nothing pruned
                qil_gamma[name] = jnp.float32(self.gamma)
        for group in self.qil_groups:
            tq = self.model.quant[self.groups[group][0]]
            units[group] = jnp.float32(float(np.max(tq.params.scale)) * qil.activation_levels(tq.spec.bits) / 2)
        qil_a = {group: jnp.float32(1.0) for group in self.qil_groups}
        qil_t = {group: jnp.float32(0.0) for group in self.shifts.values()}
        return {**params, "qil_w": qil_w, "qil_gamma": qil_gamma, "qil_a": qil_a, "qil_t": qil_t, "qil_units": units}

    # ---- intervals in the tensors' units ----

    @staticmethod
    def weight_interval(params, name: str):
        """(c, d) of a weight, per channel: c kept >= 0, d above a thousandth of its start."""
        unit, (c, d) = params["qil_units"][name], params["qil_w"][name]
        return unit * jnp.maximum(c, 0.0), unit * jnp.maximum(d, 1e-3)

    @staticmethod
    def activation_distance(params, group: str):
        return params["qil_units"][group] * jnp.maximum(params["qil_a"][group], 1e-3)

    @staticmethod
    def activation_shift(params, group: str):
        """The pruning threshold c - d (>= 0: the ReLU before it makes a negative one meaningless)."""
        return params["qil_units"][group] * jnp.maximum(params["qil_t"][group], 0.0)

    def final_bits(self) -> int | None:
        """The width of the QIL tensors the preset sets below 8 bits (what progressive stages vary)."""
        widths = {tq.spec.bits for tq in self.model.quant.values() if tq.spec.bits < 8}
        return max(widths) if widths else None

    def bits_at(self, name: str, stage: int | None) -> int:
        """A tensor's width in a stage: the stage's for QIL tensors below 8 bits, else its own."""
        bits = self.model.quant[name].spec.bits
        is_interval = self.model.quant[name].role == "weight" or name in self.qil_groups
        return stage if stage is not None and is_interval and self.method == "qil" and bits < 8 else bits

    # ---- scales, as the hooks and the export compute them ----

    def act_scale(self, params, group: str, stage: int | None):
        if group in self.qil_groups:
            return qil.activation_step(self.activation_distance(params, group), self.bits_at(group, stage))
        return params["act"][group][0]

    def weight_scale(self, params, name: str, stage: int | None):
        if self.method == "qil":
            return qil.weight_scale(*self.weight_interval(params, name), self.bits_at(name, stage))
        return params["weight_q"][name][0]

    # ---- hooks ----

    def hooks(self, stage: int | None = None, stats: dict | None = None) -> dict[str, Hook]:
        """A hook per quantized tensor; `stats` (EMA ranges) collects each activation group's
        batch (min, max) while a function traces."""
        hooks = {}
        for x, weight, bias in self.biases:
            hooks[bias] = self._bias_hook(self.model.quant[x].group or x, weight, bias, stage)
        for name, tq in self.model.quant.items():
            if tq.role == "weight":
                hooks[name] = self._weight_hook(name, tq, stage)
            else:
                hooks[name] = self._activation_hook(tq.group or name, tq, stage, stats)
        return hooks

    def _bias_hook(self, group: str, weight: str, bias: str, stage: int | None) -> Hook:
        shift_group = self.shifts.get(bias)

        def hook(b, params):
            scale = self.act_scale(params, group, stage) * self.weight_scale(params, weight, stage)
            if shift_group is not None:
                b = b - self.activation_shift(params, shift_group)
            return fake_quant(b, jnp.broadcast_to(scale, b.shape), 0.0, -INT32_LIMIT, INT32_LIMIT, 0)

        return hook

    def _weight_hook(self, name: str, tq, stage: int | None) -> Hook:
        spec, bits = tq.spec, self.bits_at(name, stage)

        def hook(w, params):
            if self.method == "qil":
                c, d = self.weight_interval(params, name)
                return qil.qil_weight(w, c, d, params["qil_gamma"][name], bits, spec.axis)
            scale, zero = params["weight_q"][name]
            return fake_quant(w, scale, zero, spec.qmin, spec.qmax, spec.axis)

        return hook

    def _activation_hook(self, group: str, tq, stage: int | None, stats: dict | None) -> Hook:
        spec, bits = tq.spec, self.bits_at(group, stage)

        def hook(x, params):
            if stats is not None:
                stats[group] = (jnp.minimum(stats[group][0], jnp.min(x)), jnp.maximum(stats[group][1], jnp.max(x))) \
                    if group in stats else (jnp.min(x), jnp.max(x))
            if group in self.qil_groups:
                return qil.qil_activation(x, self.activation_distance(params, group), bits)
            scale, zero = params["act"][group]
            return fake_quant(x, scale, zero, spec.qmin, spec.qmax, None)

        return hook
