"""canonicalize's parts: constant folding (never Q/DQ), Identity/Dropout, MatMul+Add, Clip forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
from onnx import TensorProto, helper

from graphs import make_model
from qcompiler import testing
from qcompiler.passes import Canonicalize, FoldConstants, MatMulAddToGemm, NormalizeClip, RemoveIdentity, SumToAdd


def check_same_function(before, after):
    feeds = testing.random_inputs(before)
    for a, e in zip(testing.run(after, feeds), testing.run(before, feeds)):
        testing.assert_close(a, e)


def apply(pass_, model):
    reference = model.copy()
    result = pass_(model)
    check_same_function(reference, result.model)
    return result


# ---- fold-constants -----------------------------------------------------------------------------
def test_folds_constant_subgraphs():
    nodes = [helper.make_node("Mul", ["a", "b"], ["ab"]), helper.make_node("Add", ["x", "ab"], ["y"])]
    inits = {"a": np.full(3, 2, np.float32), "b": np.full(3, 3, np.float32)}
    result = apply(FoldConstants(), make_model(nodes, [("x", [3])], [("y", None)], inits))
    assert result.modified
    assert [n.op for n in result.model.nodes] == ["Add"]
    assert np.array_equal(result.model.const_value(result.model.nodes[0].inputs[1]), np.full(3, 6, np.float32))


def test_never_folds_quantize_dequantize():
    """DQ(int8 weight) stays: folding it would undo the quantization."""
    nodes = [helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], axis=0),
             helper.make_node("MatMul", ["x", "w"], ["y"]),
             helper.make_node("QuantizeLinear", ["c", "ws0", "wz0"], ["cq"]),
             helper.make_node("DequantizeLinear", ["cq", "ws0", "wz0"], ["cd"]),
             helper.make_node("Add", ["y", "cd"], ["z"])]
    inits = {"wq": np.arange(6, dtype=np.int8).reshape(2, 3), "ws": np.array([0.5, 0.25], np.float32),
             "wz": np.zeros(2, np.int8), "c": np.ones(3, np.float32), "ws0": np.float32(0.1), "wz0": np.int8(0)}
    model = make_model(nodes, [("x", [1, 2])], [("z", None)], inits)
    result = apply(FoldConstants(), model)
    assert not result.modified
    ops = [n.op for n in result.model.nodes]
    assert ops.count("DequantizeLinear") == 2 and ops.count("QuantizeLinear") == 1


def test_constant_nodes_become_initializers():
    nodes = [helper.make_node("Constant", [], ["c"], value=helper.make_tensor("v", TensorProto.FLOAT, [2], [1, 2])),
             helper.make_node("Add", ["x", "c"], ["y"])]
    result = apply(FoldConstants(), make_model(nodes, [("x", [2])], [("y", None)]))
    assert [n.op for n in result.model.nodes] == ["Add"]


# ---- remove-identity ----------------------------------------------------------------------------
def test_removes_identity_and_dropout_keeping_output_names():
    nodes = [helper.make_node("Relu", ["x"], ["a"]),
             helper.make_node("Identity", ["a"], ["b"]),
             helper.make_node("Dropout", ["b"], ["c"]),
             helper.make_node("Relu", ["c"], ["d"]),
             helper.make_node("Identity", ["d"], ["y"])]
    result = apply(RemoveIdentity(), make_model(nodes, [("x", [2, 3])], [("y", None)]))
    assert [n.op for n in result.model.nodes] == ["Relu", "Relu"]
    assert [t.name for t in result.model.graph.outputs] == ["y"]


def test_keeps_identity_between_input_and_output():
    nodes = [helper.make_node("Identity", ["x"], ["y"])]
    result = RemoveIdentity()(make_model(nodes, [("x", [2])], [("y", None)]))
    assert not result.modified


def test_keeps_training_dropout():
    nodes = [helper.make_node("Dropout", ["x", "r", "t"], ["y"])]
    inits = {"r": np.float32(0.5), "t": np.bool_(True)}
    fold = RemoveIdentity()
    assert not fold(make_model(nodes, [("x", [2])], [("y", None)], inits)).modified
    assert any("training_mode is true" in r for _, _, r in fold.last_rejections)


# ---- matmul-add-to-gemm -------------------------------------------------------------------------
@pytest.mark.parametrize("bias_shape", [(4,), (1, 4), (3, 4), ()])
@pytest.mark.parametrize("bias_first", [False, True])
def test_matmul_add_becomes_gemm(bias_shape, bias_first):
    rng = np.random.default_rng(0)
    inits = {"w": rng.normal(size=(5, 4)).astype(np.float32), "c": rng.normal(size=bias_shape).astype(np.float32)}
    add_inputs = ["c", "m"] if bias_first else ["m", "c"]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", add_inputs, ["y"])]
    result = apply(MatMulAddToGemm(), make_model(nodes, [("x", [3, 5])], [("y", None)], inits))
    assert [n.op for n in result.model.nodes] == ["Gemm"]


def test_matmul_add_3d_is_not_gemm():
    inits = {"w": np.ones((5, 4), np.float32), "c": np.ones(4, np.float32)}
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "c"], ["y"])]
    rule_pass = MatMulAddToGemm()
    result = rule_pass(make_model(nodes, [("x", [2, 3, 5])], [("y", None)], inits))
    assert not result.modified
    assert any("2-D operands" in r for _, _, r in rule_pass.last_rejections)


def test_matmul_add_with_broadcasting_bias_is_not_gemm():
    """A (3, 1, 4) bias would make the 2-D product 3-D: not a Gemm."""
    inits = {"w": np.ones((5, 4), np.float32), "c": np.ones((3, 1, 4), np.float32)}
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "c"], ["y"])]
    assert not MatMulAddToGemm()(make_model(nodes, [("x", [2, 5])], [("y", None)], inits)).modified


# ---- normalize-clip -----------------------------------------------------------------------------
def clip_inputs(lo, hi):
    inits, names = {}, ["x"]
    for name, value in (("lo", lo), ("hi", hi)):
        if value is None:
            names.append("")
        else:
            inits[name] = np.float32(value)
            names.append(name)
    while names and names[-1] == "":
        names.pop()
    return names, inits


def single(op_nodes, inits=None, opset=17):
    return make_model(op_nodes, [("x", [2, 8])], [("y", None)], inits or {}, opset=opset)


def ops_and_bounds(model):
    from qcompiler.passes.normalize_clip import bounds_of
    return [(n.op,) + tuple(bounds_of(model, n)[1:]) for n in model.nodes]


@pytest.mark.parametrize("case,expected", [
    ("clip06", [("Clip", 0.0, 6.0)]),
    ("clip0inf", [("Relu", 0.0, math.inf)]),
    ("max0", [("Relu", 0.0, math.inf)]),
    ("min_max", [("Clip", 0.0, 6.0)]),
    ("max_min", [("Clip", 0.0, 6.0)]),
    ("relu_min", [("Clip", 0.0, 6.0)]),
    ("relu_clip", [("Clip", 0.0, 6.0)]),
    ("clip_relu", [("Clip", 0.0, 6.0)]),
    ("min_only", [("Clip", -math.inf, 6.0)]),
])
def test_clip_forms(case, expected):
    six, zero = {"six": np.float32(6)}, {"zero": np.float32(0)}
    models = {
        "clip06": lambda: single([helper.make_node("Clip", *clip_inputs(0, 6)[:1], ["y"])], clip_inputs(0, 6)[1]),
        "clip0inf": lambda: single([helper.make_node("Clip", ["x", "lo"], ["y"])], {"lo": np.float32(0)}),
        "max0": lambda: single([helper.make_node("Max", ["x", "zero"], ["y"])], zero),
        "min_max": lambda: single([helper.make_node("Max", ["x", "zero"], ["m"]),
                                   helper.make_node("Min", ["m", "six"], ["y"])], {**six, **zero}),
        "max_min": lambda: single([helper.make_node("Min", ["x", "six"], ["m"]),
                                   helper.make_node("Max", ["zero", "m"], ["y"])], {**six, **zero}),
        "relu_min": lambda: single([helper.make_node("Relu", ["x"], ["m"]),
                                    helper.make_node("Min", ["m", "six"], ["y"])], six),
        "relu_clip": lambda: single([helper.make_node("Relu", ["x"], ["m"]),
                                     helper.make_node("Clip", ["m", "", "six"], ["y"])], six),
        "clip_relu": lambda: single([helper.make_node("Clip", ["x", "", "six"], ["m"]),
                                     helper.make_node("Relu", ["m"], ["y"])], six),
        "min_only": lambda: single([helper.make_node("Min", ["x", "six"], ["y"])], six),
    }
    result = apply(NormalizeClip(), models[case]())
    assert result.modified == (case != "clip06")
    assert ops_and_bounds(result.model) == expected


def test_clip_opset9_uses_attributes():
    nodes = [helper.make_node("Relu", ["x"], ["m"]), helper.make_node("Clip", ["m"], ["y"], max=6.0)]
    result = apply(NormalizeClip(), single(nodes, opset=9))
    (node,) = result.model.nodes
    assert node.op == "Clip" and node.attrs == {"min": 0.0, "max": 6.0} and len(node.inputs) == 1


def test_disjoint_bounds_are_left_alone():
    """clip(clip(x, 0, 1), 2, 3) is the constant 2: not merged into an empty interval."""
    inits = {"a": np.float32(0), "b": np.float32(1), "c": np.float32(2), "d": np.float32(3)}
    nodes = [helper.make_node("Clip", ["x", "a", "b"], ["m"]), helper.make_node("Clip", ["m", "c", "d"], ["y"])]
    assert not NormalizeClip()(single(nodes, inits)).modified


def test_torch_relu6_export_form():
    """torch exports ReLU6 as Clip with Constant-node bounds: canonicalize leaves one Clip."""
    const = lambda name, v: helper.make_node("Constant", [], [name], value=helper.make_tensor(name, TensorProto.FLOAT, [], [v]))
    nodes = [const("lo", 0.0), const("hi", 6.0), helper.make_node("Clip", ["x", "lo", "hi"], ["y"])]
    result = apply(Canonicalize(), single(nodes))
    assert ops_and_bounds(result.model) == [("Clip", 0.0, 6.0)]


# ---- sum-to-add ---------------------------------------------------------------------------------
def test_sum_of_two_becomes_add_and_computes_the_same():
    """ResNet-50's residual Sum (ONNX zoo, opset 9) as an Add, checked against onnxruntime."""
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Sum", ["r", "x"], ["y"])]
    model = make_model(nodes, [("x", [2, 3, 4, 4])], [("y", None)], opset=13)
    result = apply(SumToAdd(), model)
    assert [n.op for n in result.model.nodes] == ["Relu", "Add"]
    assert result.model.graph.outputs[0].name == "y"


def test_sum_of_three_stays():
    nodes = [helper.make_node("Sum", ["x", "x", "x"], ["y"])]
    rule_pass = SumToAdd()
    assert not rule_pass(make_model(nodes, [("x", [2, 3])], [("y", None)], opset=13)).modified
    assert any("Sum of 3 inputs" in r for _, _, r in rule_pass.last_rejections)
