"""A jax interpreter of ONNX graphs, and of subgraphs between named tensors.

`Interpreter(model)` reads the graph once (order, constants, attributes) and checks every op;
`function(inputs, outputs, hooks)` returns a pure function `f(params, feeds) -> outputs` that
`jax.jit` and `jax.grad` can transform. Hooks are how quantization enters: a hook keyed by a
tensor name replaces that tensor's value (a weight when read, an activation when produced, a
graph input when fed) by `hook(value, params)`; `params["weights"]` overrides constants.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import jax.numpy as jnp
import numpy as np

from qcompiler.errors import UnsupportedModelError
from qcompiler.ir import Model
from qcompiler.sim.ops_basic import BASIC_OPS, STATIC_INPUTS
from qcompiler.sim.ops_nn import NN_OPS

OPS = {**BASIC_OPS, **NN_OPS}
Hook = Callable[[object, Mapping], object]


@dataclasses.dataclass(frozen=True)
class Step:
    """One node: its op, name, input names ('' for an omitted optional input), outputs, attributes."""

    op: str
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: dict


def _unsupported_attribute(step: Step) -> str | None:
    """Why an op we implement cannot run with these attributes, or None."""
    text = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in step.attrs.items()}
    if step.op == "ConvTranspose" and ("output_shape" in text or text.get("auto_pad", "NOTSET") != "NOTSET"):
        return "output_shape/auto_pad"
    if step.op == "Resize" and text.get("mode", "nearest") not in ("nearest", "linear"):
        return f"mode {text['mode']}"
    if step.op == "Resize" and text.get("coordinate_transformation_mode", "half_pixel") not in (
            "half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric"):
        return f"coordinate_transformation_mode {text['coordinate_transformation_mode']}"
    if step.op == "Pad" and text.get("mode", "constant") not in ("constant", "reflect", "edge"):
        return f"mode {text['mode']}"
    return None


class Interpreter:
    """An ONNX model (qcompiler.ir.Model) as jax functions; unsupported ops are listed at once."""

    def __init__(self, model: Model) -> None:
        graph = model.graph.copy()
        graph.cleanup(remove_unused_graph_inputs=False).toposort()
        self.opset = int(graph.opset)
        self.graph_inputs = [t.name for t in graph.inputs]
        self.graph_outputs = [t.name for t in graph.outputs]
        self.constants: dict[str, np.ndarray] = {}
        self.steps: list[Step] = []
        for name, tensor in graph.tensors().items():
            value = model.const_value(tensor)
            if value is not None and not (tensor.inputs and tensor.inputs[0].op != "Constant"):
                self.constants[name] = value
        for node in graph.nodes:
            if node.op == "Constant":
                continue
            self.steps.append(Step(node.op, node.name, tuple(t.name for t in node.inputs),
                                   tuple(t.name for t in node.outputs), dict(node.attrs)))
        self._check(model.path)
        self.producer = {out: step for step in self.steps for out in step.outputs}

    def _check(self, path) -> None:
        problems = []
        for step in self.steps:
            reason = "not implemented" if step.op not in OPS else _unsupported_attribute(step)
            static = [step.inputs[i] for i in STATIC_INPUTS.get(step.op, ()) if i < len(step.inputs)]
            missing = [t for t in static if t and t not in self.constants]
            if reason is None and missing:
                reason = f"input {missing[0]} must be a constant"
            if reason:
                problems.append(f"{step.name} ({step.op}: {reason})")
        if problems:
            raise UnsupportedModelError(f"{path or 'model'}: the jax simulator cannot run {len(problems)} node(s): "
                                        f"{', '.join(problems)}")

    def steps_between(self, inputs: Sequence[str], outputs: Sequence[str]) -> list[Step]:
        """The steps that compute `outputs` from `inputs` and constants, in graph order."""
        needed, stack, known = set(), list(outputs), set(inputs) | set(self.constants)
        while stack:
            name = stack.pop()
            if not name or name in known or name in needed:
                continue
            step = self.producer.get(name)
            if step is None:
                raise ValueError(f"tensor {name!r} is neither computed from {list(inputs)} nor a constant")
            needed.add(name)
            stack.extend(step.inputs)
        return [s for s in self.steps if any(o in needed for o in s.outputs)]

    def function(self, inputs: Sequence[str], outputs: Sequence[str],
                 hooks: Mapping[str, Hook] | None = None) -> Callable:
        """f(params, feeds) -> tuple of `outputs`, computed from `feeds` (a dict over `inputs`)."""
        steps = self.steps_between(inputs, outputs)
        hooks = dict(hooks or {})
        graph_inputs = set(self.graph_inputs)

        def run(params: Mapping, feeds: Mapping) -> tuple:
            env = {}
            for name in inputs:
                value = jnp.asarray(feeds[name])
                env[name] = hooks[name](value, params) if name in hooks and name in graph_inputs else value
            for step in steps:
                args = [self._read(step, i, name, env, params, hooks) for i, name in enumerate(step.inputs)]
                results = OPS[step.op](*args, **self._attrs(step))
                for name, value in zip(step.outputs, results):
                    env[name] = hooks[name](value, params) if name in hooks else value
            return tuple(env[name] if name in env else self._constant(name, params) for name in outputs)

        return run

    def _read(self, step: Step, index: int, name: str, env: dict, params: Mapping, hooks: Mapping):
        if not name:
            return None
        if name in env:
            return env[name]
        if index in STATIC_INPUTS.get(step.op, ()):
            return self.constants[name]
        value = self._constant(name, params)
        env[name] = hooks[name](value, params) if name in hooks else value
        return env[name]

    def _constant(self, name: str, params: Mapping):
        weights = params.get("weights", {}) if params else {}
        return weights[name] if name in weights else jnp.asarray(self.constants[name], jnp.float32)

    def _attrs(self, step: Step) -> dict:
        if step.op == "Softmax":
            return {**step.attrs, "opset": self.opset}
        return step.attrs
