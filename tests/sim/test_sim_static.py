"""Shape inputs computed while tracing: Shape of a traced tensor and arithmetic on it feed Reshape,
Slice, Expand, Resize, ...; data-dependent ones are refused, all at once; gradients still flow
through the data path."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from onnx import TensorProto, helper

from qcompiler.errors import UnsupportedModelError
from qcompiler.executor import session
from qcompiler.sim import Interpreter
from qcompiler.testing import assert_close
from simcheck import build, check, x


def ints(*values) -> np.ndarray:
    return np.array(values, np.int64)


def node(op, inputs, outputs, **attrs):
    return helper.make_node(op, inputs, outputs, **attrs)


# Batch-independent flattening as exporters write it: Reshape(x, [Shape(x)[0], -1]).
FLATTEN = [node("Shape", ["x"], ["shape"]), node("Gather", ["shape", "zero"], ["batch"], axis=0),
           node("Unsqueeze", ["batch", "axis0"], ["batch1"]), node("Concat", ["batch1", "minus1"], ["target"], axis=0),
           node("Relu", ["x"], ["r"]), node("Reshape", ["r", "target"], ["y"])]
FLATTEN_INITS = {"zero": np.array(0, np.int64), "axis0": ints(0), "minus1": ints(-1)}


@pytest.mark.parametrize("batch", [2, 5])
def test_reshape_to_a_shape_computed_from_shape(batch):
    check(FLATTEN, {"x": x(batch, 3, 4)}, FLATTEN_INITS, opset=13)


def test_slice_expand_and_resize_from_shape_arithmetic():
    """The first half along every axis (Slice ends = Shape / 2), expanded along the first two,
    resized to twice its height and width (sizes = Shape * [1, 1, 2, 2], cast to float and back)."""
    nodes = [node("Shape", ["x"], ["s"]), node("Div", ["s", "two"], ["half"]),
             node("Slice", ["x", "zeros", "half"], ["corner"]), node("Expand", ["corner", "grow"], ["wide"]),
             node("Shape", ["wide"], ["ws"]), node("Mul", ["ws", "factors"], ["target"]),
             node("Cast", ["target"], ["target_f"], to=TensorProto.FLOAT),
             node("Cast", ["target_f"], ["sizes"], to=TensorProto.INT64),
             node("Resize", ["wide", "", "", "sizes"], ["y"], mode="linear")]
    inits = {"two": ints(2, 2, 2, 2), "zeros": ints(0, 0, 0, 0), "grow": ints(2, 3, 1, 1), "factors": ints(1, 1, 2, 2)}
    check(nodes, {"x": x(2, 3, 6, 5)}, inits, opset=13)


def test_constant_of_shape_and_range_from_size():
    nodes = [node("Shape", ["x"], ["s"]), node("ConstantOfShape", ["s"], ["ones"],
                                               value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])),
             node("Size", ["x"], ["n"]), node("Range", ["start", "n", "step"], ["r"]),
             node("Cast", ["r"], ["rf"], to=TensorProto.FLOAT), node("Reshape", ["rf", "s"], ["ramp"]),
             node("Add", ["x", "ones"], ["shifted"]), node("Mul", ["shifted", "ramp"], ["y"])]
    check(nodes, {"x": x(2, 3)}, {"start": np.array(0, np.int64), "step": np.array(1, np.int64)}, opset=13)


def test_gather_with_data_dependent_indices():
    """Indices that do not fix a shape may come from data (an embedding lookup)."""
    check([node("Gather", ["table", "ids"], ["y"], axis=0)], {"ids": ints([3, 0], [1, 3])}, {"table": x(4, 5)})


def test_data_dependent_shape_inputs_are_listed_with_other_problems():
    nodes = [node("ReduceMax", ["x"], ["m"], keepdims=0), node("Cast", ["m"], ["n"], to=TensorProto.INT64),
             node("Unsqueeze", ["n", "axis0"], ["n1"]), node("Concat", ["n1", "minus1"], ["target"], axis=0),
             node("Reshape", ["x", "target"], ["r"], name="reshape_by_value"),
             node("Hardmax", ["r"], ["y"], name="hardmax")]
    model = build(nodes, {"x": np.full((2, 6), 3.0, np.float32)}, {"axis0": ints(0), "minus1": ints(-1)}, opset=13)
    with pytest.raises(UnsupportedModelError, match=r"2 node\(s\): reshape_by_value \(Reshape: input target is "
                                                    r"computed from data.*hardmax \(Hardmax: not implemented\)"):
        Interpreter(model)


def test_a_fed_shape_input_is_refused_when_traced():
    sim = Interpreter(build(FLATTEN, {"x": x(2, 3, 4)}, FLATTEN_INITS, opset=13))
    with pytest.raises(UnsupportedModelError, match="input target must be known while tracing"):
        jax.jit(sim.function(["r", "target"], ["y"]))({}, {"r": x(2, 3, 4), "target": ints(2, -1)})


def test_gradient_through_computed_shapes():
    """d(sum(y * probe)) / d(weight) through Reshape (shape from Shape), Slice, a linear Resize to
    sizes from Shape, and a Gather, against central differences."""
    nodes = [node("Mul", ["x", "w"], ["xw"]), *FLATTEN[:4], node("Reshape", ["xw", "target"], ["flat"]),
             node("Reshape", ["flat", "s4"], ["img"]), node("Slice", ["img", "one", "big", "axes"], ["cut"]),
             node("Shape", ["cut"], ["cs"]), node("Mul", ["cs", "factors"], ["sizes"]),
             node("Resize", ["cut", "", "", "sizes"], ["up"], mode="linear"),
             node("Gather", ["up", "pick"], ["y"], axis=3)]
    inits = {**FLATTEN_INITS, "w": x(3, 4), "s4": ints(0, 1, 3, 4), "one": ints(1), "big": ints(100), "axes": ints(2),
             "factors": ints(1, 1, 2, 2), "pick": ints(0, -1, 3)}
    feeds = {"x": x(2, 3, 4)}
    model = build(nodes, feeds, inits, opset=13)
    expected = session(model, optimize=False).run(["y"], feeds)[0]
    sim = Interpreter(model)
    forward = sim.function(["x"], ["y"])
    probe = jnp.asarray(x(*expected.shape))

    def loss(w):
        return jnp.sum(forward({"weights": {"w": w}}, feeds)[0] * probe)

    w = jnp.asarray(inits["w"])
    assert_close(np.asarray(jax.jit(forward)({"weights": {"w": w}}, feeds)[0]), expected)
    grad = np.asarray(jax.jit(jax.grad(loss))(w))
    eps, numeric = 1e-2, np.zeros(w.shape, np.float32)
    for index in np.ndindex(*w.shape):
        step = np.zeros(w.shape, np.float32)
        step[index] = eps
        numeric[index] = (loss(w + step) - loss(w - step)) / (2 * eps)
    np.testing.assert_allclose(grad, numeric, rtol=2e-2, atol=2e-3)
    assert np.abs(grad).max() > 0.1
