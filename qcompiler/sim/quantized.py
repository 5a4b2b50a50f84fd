"""The annotated model (QuantSpecs + params from calibrate-ranges) as a simulated quantized network.

`QuantState` says how each kind of quantizer behaves in a traced function (static, so a change
re-traces); `quant_params` collects the numbers that can be learned or changed between calls:

    params = {"weights": {name: float weight}, "weight_q": {name: (scale, zero point)},
              "act": {group: (scale, zero point)}, "rounding": {name: AdaRound V}, "rng": key}
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from qcompiler.quant.annotation import TensorQuant, weight_values
from qcompiler.quant.maths import INT32_LIMIT
from qcompiler.sim.fake_quant import adaround_weight, broadcast_channels, fake_quant
from qcompiler.sim.interpreter import Hook

WEIGHT_MODES = ("float", "nearest", "soft", "hard")


@dataclasses.dataclass(frozen=True)
class QuantState:
    """weights: float (unquantized), nearest (round to nearest), hard (the learned rounding where
    params["rounding"] has one, else nearest: what the QDQ export computes) or soft (AdaRound's
    h(V) where learned); activations on or off; drop: QDrop's probability of keeping an
    activation in float during training (needs params["rng"])."""

    weights: str = "hard"
    activations: bool = True
    drop: float = 0.0

    def __post_init__(self) -> None:
        if self.weights not in WEIGHT_MODES:
            raise ValueError(f"weights must be one of {WEIGHT_MODES}")


def quant_params(model) -> dict:
    """The simulation parameters of an annotated, calibrated model (see the module docstring)."""
    weights = weight_values(model)
    weight_q, act, rounding = {}, {}, {}
    for name, tq in model.quant.items():
        pair = (jnp.asarray(tq.params.scale, jnp.float32), jnp.asarray(tq.params.zero_point, jnp.float32))
        if tq.role == "weight":
            weight_q[name] = pair
            if tq.rounded is not None:
                rounding[name] = _rounding_as_v(weights[name], tq)
        elif tq.group == name or tq.group is None:
            act[name] = pair
    return {"weights": {k: jnp.asarray(v, jnp.float32) for k, v in weights.items()}, "weight_q": weight_q,
            "act": act, "rounding": rounding, "rng": jax.random.PRNGKey(0)}


def _rounding_as_v(weight: np.ndarray, tq: TensorQuant) -> jnp.ndarray:
    """Learned integers as AdaRound V (+/-10: h(V) saturates), so the "hard" hook reproduces them."""
    scale = broadcast_channels(tq.params.scale, weight.ndim, tq.spec.axis)
    zero = broadcast_channels(tq.params.zero_point, weight.ndim, tq.spec.axis)
    up = np.asarray(tq.rounded) - np.asarray(zero) - np.floor(np.asarray(_quotient(weight, scale))) >= 1
    return jnp.where(up, 10.0, -10.0).astype(jnp.float32)


def nearest_rounding(params: dict, quant: dict[str, TensorQuant], names) -> dict[str, jnp.ndarray]:
    """Round-to-nearest of weights `names` as AdaRound V (+/-10), so that the "hard" hook computes
    with them what it computes without: a jitted function then sees one parameter structure
    before and after AdaRound learns them (a new key would retrace it)."""
    return {name: _nearest_v(params["weights"][name], broadcast_channels(
        params["weight_q"][name][0], params["weights"][name].ndim, quant[name].spec.axis)) for name in names}


@jax.jit
def _quotient(w, scale):
    # XLA's division, as the hooks compute it: numpy's differs in the last bit now and then, and a
    # channel's largest weight over its scale is an integer, where that bit moves the floor
    return w / scale


@jax.jit
def _nearest_v(w, scale):
    scaled = _quotient(w, scale)
    return jnp.where(jnp.round(scaled) - jnp.floor(scaled) >= 1, 10.0, -10.0).astype(jnp.float32)


def quant_hooks(model, state: QuantState, only: set[str] | None = None) -> dict[str, Hook]:
    """A hook per quantized tensor of an annotated model (restricted to `only` when given),
    behaving as `state` says; biases are rounded to int32 at scale s_x * s_w, as insert-qdq does."""
    quant = model.quant
    hooks = {}
    if state.weights != "float":
        for x, weight, bias in quantized_biases(model):
            if only is None or bias in only:
                hooks[bias] = _bias_hook(quant[x].group or x, weight)
    for index, (name, tq) in enumerate(sorted(quant.items())):
        if only is not None and name not in only:
            continue
        if tq.role == "weight" and state.weights != "float":
            hooks[name] = _weight_hook(name, tq, state.weights)
        elif tq.role == "activation" and state.activations:
            hooks[name] = _activation_hook(tq.group or name, tq, state.drop, index)
    return hooks


def quantized_biases(model) -> list[tuple[str, str, str]]:
    """(input, weight, bias) names of the layers whose input and weight are quantized (insert-qdq's rule)."""
    out = []
    for name, tq in model.quant.items():
        if tq.role != "weight":
            continue
        for layer in model.consumers(model.tensor(name)):
            bias = model.input_or_none(layer, 2)
            x_tq = model.quant.get(layer.inputs[0].name)
            value = model.const_value(bias)
            if value is not None and value.ndim == 1 and x_tq is not None and layer.attrs.get("beta", 1.0) == 1.0:
                out.append((layer.inputs[0].name, name, bias.name))
    return out


def _bias_hook(act_group: str, weight: str) -> Hook:
    def hook(b, params):
        scale = params["act"][act_group][0] * params["weight_q"][weight][0]
        return fake_quant(b, jnp.broadcast_to(scale, b.shape), 0.0, -INT32_LIMIT, INT32_LIMIT, 0)

    return hook


def _weight_hook(name: str, tq: TensorQuant, mode: str) -> Hook:
    spec = tq.spec

    def hook(w, params):
        scale, zero = params["weight_q"][name]
        if mode in ("soft", "hard") and name in params["rounding"]:
            return adaround_weight(w, params["rounding"][name], scale, zero, spec.qmin, spec.qmax, spec.axis,
                                   hard=mode == "hard")
        return fake_quant(w, scale, zero, spec.qmin, spec.qmax, spec.axis)

    return hook


def _activation_hook(group: str, tq: TensorQuant, drop: float, index: int) -> Hook:
    spec = tq.spec

    def hook(x, params):
        scale, zero = params["act"][group]
        y = fake_quant(x, scale, zero, spec.qmin, spec.qmax, None)
        if drop <= 0.0:
            return y
        keep_float = jax.random.bernoulli(jax.random.fold_in(params["rng"], index), drop, x.shape)
        return jnp.where(keep_float, x, y)

    return hook


def learned_integers(params: dict, quant: dict[str, TensorQuant]) -> dict[str, np.ndarray]:
    """Each AdaRound-learned weight as its integers: clip(floor(w / s) + [V >= 0] + z, qmin, qmax)."""
    out = {}
    for name, v in params["rounding"].items():
        spec = quant[name].spec
        w = np.asarray(params["weights"][name])
        scale, zero = (np.asarray(broadcast_channels(p, w.ndim, spec.axis)) for p in params["weight_q"][name])
        q = np.floor(np.asarray(_quotient(w, scale))) + (np.asarray(v) >= 0) + zero
        out[name] = np.clip(q, spec.qmin, spec.qmax).astype(np.int32)
    return out
