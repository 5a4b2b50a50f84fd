"""Arithmetic, comparisons, reductions, activations, normalizations and batched MatMul of the
simulator against onnxruntime: integer and bool results keep their kind, reductions take their
axes as an attribute or an input by opset."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from simcheck import check, x

BOOLS = np.random.default_rng(1).random((2, 3, 4)) > 0.5


def node(op, inputs, outputs=("y",), **attrs):
    return helper.make_node(op, list(inputs), list(outputs), **attrs)


def test_integer_div_truncates_toward_zero():
    a, b = np.array([-7, 7, -7, 7, 6], np.int32), np.array([2, 2, -2, -2, 3], np.int32)
    check([node("Div", "ab")], {"a": a, "b": b})


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul"])
def test_integer_arithmetic(op):
    a, b = np.arange(-6, 6, dtype=np.int64).reshape(3, 4), np.array([3, -2, 1, 5], np.int64)
    check([node(op, "ab")], {"a": a, "b": b})


@pytest.mark.parametrize("opset,base,exponent", [
    (13, x(2, 3, scale=0.5, offset=2.0), x(3)),
    (15, x(2, 3), np.array([2, 3, -1], np.int64)),
    (15, np.array([[1, 2, 3], [4, 5, 6]], np.int64), np.array([2.0, 0.5, 1.0], np.float32)),
])
def test_pow(opset, base, exponent):
    check([node("Pow", "ab")], {"a": base, "b": exponent}, opset=opset)


COMPARISONS = ["Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual"]


def _side_by_side(ops, inputs, **attrs):
    """One node per op over the same inputs, each with its own output (one model, one compile)."""
    return [node(op, inputs, [f"y_{op}"], **attrs) for op in ops]


@pytest.mark.parametrize("ints", [False, True])
def test_comparisons(ints):
    a, b = np.round(x(2, 3, 4) * 2), np.round(x(3, 1) * 2)
    if ints:
        a, b = a.astype(np.int64), b.astype(np.int32).astype(np.int64)
    check(_side_by_side(COMPARISONS, "ab"), {"a": a, "b": b}, opset=16)


def test_logic():
    check(_side_by_side(["And", "Or", "Xor"], "ab") + [node("Not", "a", ["y_not"])], {"a": BOOLS, "b": BOOLS[0, :, :1]})


@pytest.mark.parametrize("values", [(x(3, 4), x(4)), (np.arange(4, dtype=np.int64), np.full((3, 1), -1, np.int64))])
def test_where(values):
    check([node("Where", ["c", "a", "b"])], {"c": BOOLS[0], "a": values[0], "b": values[1]}, opset=16)


@pytest.mark.parametrize("count", [1, 3])
def test_variadic_broadcast(count):
    inputs = dict(list({"a": x(2, 3, 4), "b": x(3, 1), "c": x(4)}.items())[:count])
    check(_side_by_side(["Min", "Max", "Sum", "Mean"], inputs), inputs)


def test_max_int():
    check([node("Max", "ab")], {"a": np.array([[1, -5, 3]], np.int32), "b": np.array([[0], [4]], np.int32)})


UNARY_INPUTS = {"Sqrt": x(3, 4, scale=0.5, offset=2), "Log": x(3, 4, scale=0.5, offset=2),
                "Reciprocal": x(3, 4, scale=0.5, offset=2),
                "Round": np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 0.49, -3.7], np.float32)}


UNARY = ["Neg", "Abs", "Floor", "Ceil", "Round", "Sqrt", "Reciprocal", "Exp", "Log", "Erf"]


def test_unary_math():
    inputs = {f"a_{op}": UNARY_INPUTS.get(op, x(3, 4, scale=2)) for op in UNARY}
    check([node(op, [f"a_{op}"], [f"y_{op}"]) for op in UNARY], inputs)


REDUCTIONS = ["ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceProd", "ReduceL1", "ReduceL2",
              "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp"]


def _data(op):
    return x(2, 3, 4, scale=0.3, offset=1.0) if op in ("ReduceLogSum", "ReduceProd") else x(2, 3, 4)


# The attribute form (ReduceSum < 13, the others < 18) at opset 13 is ONNX's node tests' (test_sim_onnx_node).
@pytest.mark.parametrize("case", [dict(axes=[-1, 0], keepdims=0), dict(keepdims=0)], ids=str)
def test_reduce_sum_axes_attribute(case):
    check([node("ReduceSum", "a", **case)], {"a": x(2, 3, 4)}, opset=11)


@pytest.mark.parametrize("case", [dict(axes=[-1, 0], keepdims=0), dict(axes=[], noop_with_empty_axes=1), dict()],
                         ids=str)
def test_reduce_axes_input(case):
    """Axes as an input (opset 18; ReduceSum 13: its own model); empty axes with
    noop_with_empty_axes reduce over none (ReduceL1 is then |x|); no axes: all."""
    case = dict(case)
    axes = case.pop("axes", None)
    inits = {} if axes is None else {"axes": np.array(axes, np.int64)}
    for ops, opset in (([op for op in REDUCTIONS if op != "ReduceSum"], 18), (["ReduceSum"], 13)):
        inputs = {f"a_{op}": _data(op) for op in ops}
        check([node(op, [f"a_{op}", *inits], [f"y_{op}"], **case) for op in ops], inputs, inits, opset=opset)


@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")  # numpy's log(0), the static path's -inf
def test_reduce_over_an_empty_set():
    """Max -inf, Min inf, Mean 0 (onnxruntime's answers), and the others' identities."""
    ops = [op for op in REDUCTIONS if op != "ReduceSum"]
    inits = {"axes": np.array([1], np.int64)}
    check([node(op, ["a", "axes"], [f"y_{op}"]) for op in ops], {"a": np.zeros((2, 0, 4), np.float32)}, inits,
          opset=18)


def test_reduce_int_keeps_type():
    check([node("ReduceSum", "a", keepdims=0, axes=[1])], {"a": np.arange(12, dtype=np.int32).reshape(3, 4)},
          opset=11)


@pytest.mark.parametrize("attrs", [dict(), dict(axis=-1, keepdims=0), dict(axis=1, select_last_index=1),
                                   dict(axis=0, keepdims=0, select_last_index=1)], ids=str)
def test_arg_extremes(attrs):
    check(_side_by_side(["ArgMax", "ArgMin"], "a", **attrs), {"a": np.round(x(3, 4, 5))}, opset=13)


ACTIVATIONS = {  # opset: (op, attributes)
    13: [("Sigmoid", {}), ("Softplus", {}), ("Elu", {}), ("Elu", dict(alpha=0.3)), ("Selu", {}),
         ("Selu", dict(alpha=1.2, gamma=0.7)), ("LogSoftmax", {}), ("LogSoftmax", dict(axis=1))],
    11: [("LogSoftmax", dict(axis=1)), ("LogSoftmax", {})],  # softmax over the flattened trailing axes
    14: [("HardSwish", {})], 18: [("Mish", {})], 20: [("Gelu", {}), ("Gelu", dict(approximate="tanh"))],
}


@pytest.mark.parametrize("opset", ACTIVATIONS)
def test_activations(opset):
    nodes = [node(op, "a", [f"y{i}_{op}"], **attrs) for i, (op, attrs) in enumerate(ACTIVATIONS[opset])]
    check(nodes, {"a": x(2, 3, 4, scale=3)}, opset=opset)


@pytest.mark.skipif(not onnx.defs.has("Swish"), reason="Swish is ONNX opset 24 (onnx >= 1.18)")
@pytest.mark.parametrize("attrs", [{}, dict(alpha=0.5)])
def test_swish(attrs):
    check([node("Swish", "a", **attrs)], {"a": x(2, 3, scale=3)}, opset=24, oracle="reference")


@pytest.mark.parametrize("opset,slope", [(9, x(3, 1, 1)), (16, x(4)), (16, np.array([0.25], np.float32))])
def test_prelu_broadcast_slope(opset, slope):
    check([node("PRelu", ["a", "s"])], {"a": x(2, 3, 2, 4)}, {"s": slope}, opset=opset)


@pytest.mark.parametrize("axis,bias", [(-1, True), (1, True), (2, False)])
def test_layer_normalization(axis, bias):
    shape = (2, 3, 4, 5)[axis % 4:]
    inits = {"w": x(*shape), **({"b": x(*shape)} if bias else {})}
    check([node("LayerNormalization", ["a", *inits], ["y", "mean", "inv_std"], axis=axis, epsilon=1e-3)],
          {"a": x(2, 3, 4, 5, scale=2, offset=1)}, inits, outputs=("y", "mean", "inv_std"))


def test_instance_normalization():
    check([node("InstanceNormalization", ["a", "s", "b"], epsilon=1e-3)], {"a": x(2, 3, 4, 5, offset=1)},
          {"s": x(3), "b": x(3)})


def test_global_max_pool():
    check([node("GlobalMaxPool", "a")], {"a": x(2, 3, 4, 5)})


@pytest.mark.parametrize("a,b", [((2, 3, 4), (2, 4, 5)), ((2, 1, 3, 4), (5, 4, 6)), ((4,), (2, 4, 3)),
                                 ((2, 3, 4), (4,))], ids=str)
def test_matmul_batched_broadcast(a, b):
    check([node("MatMul", "ab")], {"a": x(*a), "b": x(*b)})
