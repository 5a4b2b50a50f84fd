"""Small models with typed inputs, run by the jax simulator and by onnxruntime (or ONNX's reference).

`check` compares every output: floats within the float32 rule of qcompiler.testing, integer and
bool outputs exactly and of the same kind. When every node's op computes with numpy on numpy
inputs, it also runs the model with its inputs made constants, and asserts that the simulator
then returns numpy values (the static path that shape computations take) with the same numbers.
"""

from __future__ import annotations

import jax
import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from qcompiler import ir
from qcompiler.executor import session
from qcompiler.sim import Interpreter
from qcompiler.sim.arrays import is_float
from qcompiler.sim.interpreter import NUMPY_OPS, SHAPE_OF
from qcompiler.testing import assert_close

RNG = np.random.default_rng(0)


def x(*shape, scale: float = 1.0, offset: float = 0.0) -> np.ndarray:
    return (scale * RNG.standard_normal(shape) + offset).astype(np.float32)


def build(nodes, inputs: dict[str, np.ndarray], inits: dict | None = None, outputs=("y",),
          opset: int = 17) -> ir.Model:
    """A model over typed graph inputs and initializers; output types come from shape inference."""
    infos = [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
             for k, v in inputs.items()]
    inits = [numpy_helper.from_array(np.asarray(v), k) for k, v in (inits or {}).items()]
    graph = helper.make_graph(nodes, "test", infos, [helper.make_empty_tensor_value_info(o) for o in outputs], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    proto.ir_version = helper.find_min_ir_version_for(list(proto.opset_import), True)
    inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    known = {v.name: v for v in inferred.graph.value_info}
    del proto.graph.output[:]
    proto.graph.output.extend(known[o] for o in outputs)
    return ir.Model.from_onnx(proto)


def compare(actual, expected: np.ndarray, what: str) -> None:
    actual = np.asarray(actual)
    if is_float(expected.dtype):
        assert actual.dtype == np.float32, f"{what}: dtype {actual.dtype}"
        actual, expected = actual.astype(np.float64), expected.astype(np.float64)
        finite = np.isfinite(expected)  # nan and inf where expected, the rest within float32's rule
        np.testing.assert_array_equal(actual[~finite], expected[~finite], err_msg=what)
        assert_close(np.where(finite, actual, 0.0), np.where(finite, expected, 0.0), what=what)
        return
    assert actual.dtype.kind == expected.dtype.kind, f"{what}: dtype {actual.dtype}, expected {expected.dtype}"
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    np.testing.assert_array_equal(actual, expected, err_msg=what)


def simulate(model: ir.Model, inputs: dict[str, np.ndarray], outputs) -> list:
    sim = Interpreter(model)
    return list(jax.jit(sim.function(list(inputs), list(outputs)))({}, inputs))


def simulate_static(model: ir.Model, inputs: dict[str, np.ndarray], outputs, what: str) -> list:
    """The model with its graph inputs as constants, run without jit: the outputs must be numpy."""
    proto = model.to_onnx()
    proto.graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in inputs.items())
    kept = [i for i in proto.graph.input if i.name not in inputs]
    del proto.graph.input[:]
    proto.graph.input.extend(kept)
    sim = Interpreter(ir.Model.from_onnx(proto))
    results = sim.function([], list(outputs))({}, {})
    assert all(isinstance(r, np.ndarray) for r in results), f"{what}: not computed with numpy"
    return list(results)


def reference(model: ir.Model, inputs: dict[str, np.ndarray], outputs, oracle: str = "onnxruntime") -> list:
    if oracle == "onnxruntime":
        return session(model, optimize=False).run(list(outputs), inputs)
    return ReferenceEvaluator(model.to_onnx()).run(list(outputs), inputs)


def leaves(nodes) -> list[str]:
    """The node outputs no node reads: a model may test several ops side by side (one compile)."""
    read = {name for n in nodes for name in n.input}
    return [name for n in nodes for name in n.output if name and name not in read]


def check(nodes, inputs: dict[str, np.ndarray], inits: dict | None = None, opset: int = 17, outputs=None,
          oracle: str = "onnxruntime") -> None:
    outputs = leaves(nodes) if outputs is None else outputs
    model = build(nodes, inputs, inits, outputs, opset)
    expected = reference(model, inputs, outputs, oracle)
    what = nodes[-1].op_type
    runs = {what: simulate(model, inputs, outputs)}
    if all(n.op_type in NUMPY_OPS | SHAPE_OF for n in nodes):
        runs[f"{what} (static)"] = simulate_static(model, inputs, outputs, what)
    for label, actual in runs.items():
        assert len(actual) == len(expected), label
        for value, wanted, name in zip(actual, expected, outputs):
            compare(value, wanted, f"{label} {name}")
