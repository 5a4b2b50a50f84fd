"""A jax interpreter of ONNX graphs, and of subgraphs between named tensors.

`Interpreter(model)` reads the graph once (order, constants, attributes) and checks every op;
`function(inputs, outputs, hooks)` returns a pure function `f(params, feeds) -> outputs` that
`jax.jit` and `jax.grad` can transform. Hooks are how quantization enters: a hook keyed by a
tensor name replaces that tensor's value (a weight when read, an activation when produced, a
graph input when fed) by `hook(value, params)`; `params["weights"]` overrides constants.

Inputs that fix shapes (STATIC_INPUTS) must be known while tracing: a constant, a Shape or Size
output, or what numpy-capable ops compute from those alone (qcompiler.sim.arrays). Such values
stay numpy through the run; an input computed from data is refused when the model is read.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from qcompiler.errors import UnsupportedModelError
from qcompiler.ir import Model
from qcompiler.sim.arrays import as_float32, is_float, is_static, onnx_dtype
from qcompiler.sim.ops_basic import BASIC_CHECKS, BASIC_OPS, BASIC_STATIC_INPUTS
from qcompiler.sim.ops_math import MATH_OPS, MATH_STATIC_INPUTS
from qcompiler.sim.ops_nn import NN_CHECKS, NN_OPS
from qcompiler.sim.ops_resize import RESIZE_CHECKS, RESIZE_OPS, RESIZE_STATIC_INPUTS
from qcompiler.sim.ops_shape import SHAPE_CHECKS, SHAPE_OPS, SHAPE_STATIC_INPUTS

OPS = {**BASIC_OPS, **MATH_OPS, **SHAPE_OPS, **NN_OPS, **RESIZE_OPS}
#: Inputs (by position) that fix shapes: known while tracing (see qcompiler.sim.arrays), passed as numpy.
STATIC_INPUTS = {**BASIC_STATIC_INPUTS, **MATH_STATIC_INPUTS, **SHAPE_STATIC_INPUTS, **RESIZE_STATIC_INPUTS}
#: Ops that compute with numpy when their inputs are numpy, so their outputs are static then too.
NUMPY_OPS = (frozenset(SHAPE_OPS) | frozenset(MATH_OPS)) - {"Erf"}
#: Ops whose output is static whatever their input: a traced tensor's shape is known.
SHAPE_OF = frozenset({"Shape", "Size"})
#: Per op, why it cannot run with these attributes and constant inputs (None: it can).
CHECKS = {**BASIC_CHECKS, **SHAPE_CHECKS, **NN_CHECKS, **RESIZE_CHECKS}
#: Ops whose semantics, not just their signature, changed between opsets: they get `opset=`.
OPSET_DEPENDENT = frozenset({"Softmax", "LogSoftmax", "Resize"})
Hook = Callable[[object, Mapping], object]


@dataclasses.dataclass(frozen=True)
class Step:
    """One node: its op, name, input names ('' for an omitted optional input), outputs, attributes."""

    op: str
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: dict


def _constant_node_value(node) -> np.ndarray | None:
    """A Constant node's value_float(s) / value_int(s) attribute (`value` is read by the ir)."""
    for key, dtype in (("value_float", np.float32), ("value_floats", np.float32), ("value_int", np.int64),
                       ("value_ints", np.int64)):
        if key in node.attrs:
            return np.asarray(node.attrs[key], dtype)
    return None


def _attributes(node) -> dict:
    """A node's attributes; CastLike also gets the declared type of its `like` input, which
    the value itself may not carry (float16 and double values are float32 in the simulator)."""
    attrs = dict(node.attrs)
    if node.op == "CastLike" and node.inputs[1].dtype is not None:
        dtype = node.inputs[1].dtype  # graphsurgeon gives an ONNX type number where numpy has none
        attrs["like_dtype"] = onnx_dtype(dtype) if isinstance(dtype, int) else dtype
    return attrs


class Interpreter:
    """An ONNX model (qcompiler.ir.Model) as jax functions; unsupported ops are listed at once."""

    def __init__(self, model: Model) -> None:
        graph = model.graph.copy()
        graph.cleanup(remove_unused_graph_inputs=False).toposort()
        self.opset = int(graph.opset)
        self.graph_inputs = [t.name for t in graph.inputs]
        #: The model fixes its batch at 1 (tflite exports): run it one sample at a time (see `function`).
        self.per_sample = bool(graph.inputs) and all(t.shape and t.shape[0] == 1 for t in graph.inputs)
        self.graph_outputs = [t.name for t in graph.outputs]
        self.constants: dict[str, np.ndarray] = {}
        self.steps: list[Step] = []
        for name, tensor in graph.tensors().items():
            value = model.const_value(tensor)
            if value is None and tensor.inputs and tensor.inputs[0].op == "Constant":
                value = _constant_node_value(tensor.inputs[0])
            if value is not None and not (tensor.inputs and tensor.inputs[0].op != "Constant"):
                self.constants[name] = as_float32(value)
        for node in graph.nodes:
            if node.op == "Constant":
                continue
            self.steps.append(Step(node.op, node.name, tuple(t.name for t in node.inputs),
                                   tuple(t.name for t in node.outputs), _attributes(node)))
        self.static = self._static_tensors()
        self._check(model.path)
        self.producer = {out: step for step in self.steps for out in step.outputs}

    def _static_tensors(self) -> set[str]:
        """The tensors known while tracing: constants, Shape/Size outputs, and what numpy-capable
        ops compute from those alone."""
        static = set(self.constants)
        for step in self.steps:
            if step.op in SHAPE_OF or (step.op in NUMPY_OPS and all(not t or t in static for t in step.inputs)):
                static.update(step.outputs)
        return static

    def _check(self, path) -> None:
        problems = []
        for step in self.steps:
            reason = "not implemented" if step.op not in OPS else None
            if reason is None and step.op in CHECKS:
                reason = CHECKS[step.op](step.attrs, [self.constants.get(t) for t in step.inputs])
            static = [step.inputs[i] for i in STATIC_INPUTS.get(step.op, ()) if i < len(step.inputs)]
            missing = [t for t in static if t and t not in self.static]
            if reason is None and missing:
                reason = f"input {missing[0]} is computed from data; it must come from constants and shapes"
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
            env, static = {}, {}  # static: the unhooked numpy values, for inputs that fix shapes
            for name in inputs:
                value = jnp.asarray(feeds[name])
                value = value.astype(jnp.float32) if is_float(value.dtype) else value
                env[name] = hooks[name](value, params) if name in hooks and name in graph_inputs else value
            for step in steps:
                args = [self._read(step, i, name, env, static, params, hooks) for i, name in enumerate(step.inputs)]
                results = OPS[step.op](*args, **self._attrs(step))
                for name, value in zip(step.outputs, results):
                    if is_static(value):  # numpy gives 0-d results as scalars
                        value = static[name] = np.asarray(value)
                    env[name] = hooks[name](value, params) if name in hooks else value
            return tuple(env[name] if name in env else self._constant(name, params) for name in outputs)

        return _one_sample_at_a_time(run) if self.per_sample else run

    def _read(self, step: Step, index: int, name: str, env: dict, static: dict, params: Mapping, hooks: Mapping):
        """An input's value. Inputs that fix shapes read the numpy value, never a hooked or learned one."""
        if not name:
            return None
        if index in STATIC_INPUTS.get(step.op, ()):
            value = static.get(name, self.constants.get(name))
            if value is None:
                raise UnsupportedModelError(f"{step.name} ({step.op}): input {name} must be known while tracing, "
                                            "but it was fed or computed from a learned value")
            return value
        if name in env:
            return env[name]
        value = self._constant(name, params)
        env[name] = hooks[name](value, params) if name in hooks else value
        return env[name]

    def _constant(self, name: str, params: Mapping):
        """A constant: a learned value from params["weights"] (jax), else the model's (numpy, float32)."""
        weights = params.get("weights", {}) if params else {}
        return weights[name] if name in weights else self.constants[name]

    def _attrs(self, step: Step) -> dict:
        if step.op in OPSET_DEPENDENT:
            return {**step.attrs, "opset": self.opset}
        if step.op == "Split":  # equal parts, one per output, unless num_outputs says
            return {**step.attrs, "outputs": len(step.outputs)}
        return step.attrs


def _one_sample_at_a_time(run: Callable) -> Callable:
    """`run` mapped over the samples of its feeds, each fed as a batch of one. A model that fixes
    its batch at 1 spells that 1 out in its Reshape targets, so a batch of samples fed at once
    would be mixed up; callers still pass and get arrays with the samples first."""

    def per_sample(params: Mapping, feeds: Mapping) -> tuple:
        if all(np.shape(value)[:1] == (1,) for value in feeds.values()):
            return run(params, feeds)   # fed the model's own batch of one: as written

        def one(sample: Mapping) -> tuple:
            outputs = run(params, {name: value[None] for name, value in sample.items()})
            return tuple(o[0] if getattr(o, "ndim", 0) and o.shape[0] == 1 else o for o in outputs)

        return jax.vmap(one)(dict(feeds))

    return per_sample
