"""FoldBatchNorm preserves the function (onnxruntime before vs after) and leaves no foldable BN."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from graphs import BUNDLED_MODELS, LIGHT_MODELS, bn_node, bn_params, make_model
from qcompiler import ir, testing
from qcompiler.passes import Canonicalize, FoldBatchNorm
from qcompiler.passes.fold_batchnorm import BatchNormToMulAdd
from qcompiler.rewrite import Reject


def with_extra_outputs(model: ir.Model, names: list[str]) -> ir.Model:
    """A copy that also outputs the named tensors (to compare every BN's output, not just the last)."""
    copy = model.copy()
    tensors = copy.tensors()
    existing = {t.name for t in copy.graph.outputs}
    for name in names:
        if name in tensors and name not in existing:
            copy.graph.outputs.append(tensors[name])
    return copy


def fold_and_compare(model: ir.Model, seed: int = 0) -> ir.Model:
    """Fold, then compare every BN output and every graph output against the unfolded model."""
    bn_outputs = [n.outputs[0].name for n in model.graph.nodes if n.op == "BatchNormalization"]
    # Pre-softmax logits too: a saturated softmax would hide errors in the layers before it.
    softmax_inputs = [n.inputs[0].name for n in model.graph.nodes if n.op == "Softmax"]
    watched = bn_outputs + softmax_inputs
    feeds = testing.random_inputs(model, seed)
    expected = testing.run(with_extra_outputs(model, watched), feeds)

    result = FoldBatchNorm()(model.copy())

    assert result.modified == bool(bn_outputs)
    actual = testing.run(with_extra_outputs(result.model, watched), feeds)
    names = [t.name for t in with_extra_outputs(model, watched).graph.outputs]
    for name, a, e in zip(names, actual, expected):
        testing.assert_close(a, e, np.float32, what=name)
    foldable = [n.name for n in result.model.graph.nodes
                if n.op == "BatchNormalization" and not isinstance(BatchNormToMulAdd().match(result.model, n), Reject)]
    assert foldable == []
    return result.model


@pytest.mark.parametrize("path", LIGHT_MODELS, ids=lambda p: p.stem)
def test_light_models(path):
    """Real topologies from the onnx wheel, with random weights so every channel differs."""
    model = Canonicalize()(ir.load(path)).model
    testing.randomize_weights(model, seed=1)
    folded = fold_and_compare(model)
    assert not any(n.op == "BatchNormalization" for n in folded.graph.nodes)


def test_the_bundled_models_are_there():
    assert [p.name for p in BUNDLED_MODELS] == ["fashion_mobilenetv2.onnx", "fashion_resnet8.onnx",
                                                "mobilenet_v2_imagenet.onnx"]


@pytest.mark.parametrize("path", BUNDLED_MODELS, ids=lambda p: p.stem)
def test_bundled_models(path):
    model = Canonicalize()(ir.load(path)).model
    before = sum(n.op == "BatchNormalization" for n in model.graph.nodes)
    folded = fold_and_compare(model)
    assert before > 0
    assert not any(n.op == "BatchNormalization" for n in folded.graph.nodes)
    assert not any(n.op == "Mul" for n in folded.graph.nodes), "every BN here follows a conv and should fold into it"


def conv_bn_model(groups=1, bias=True, c_in=4, c_out=6, op="Conv", kernel=3, stride=1, pads=1, opset=17):
    rng = np.random.default_rng(3)
    if op == "Conv":
        weight = rng.normal(size=(c_out, c_in // groups, kernel, kernel)).astype(np.float32)
    else:
        weight = rng.normal(size=(c_in, c_out // groups, kernel, kernel)).astype(np.float32)
    inits = {"w": weight, **bn_params(c_out)}
    inputs = ["x", "w"]
    if bias:
        inits["b"] = rng.normal(size=c_out).astype(np.float32)
        inputs.append("b")
    nodes = [helper.make_node(op, inputs, ["z"], name="layer", group=groups, strides=[stride, stride],
                              pads=[pads] * 4),
             bn_node("z", "y", epsilon=1e-3)]
    return make_model(nodes, [("x", [2, c_in, 7, 7])], [("y", None)], inits, opset=opset)


@pytest.mark.parametrize("groups,bias", [(1, True), (1, False), (2, True), (4, False)])
def test_conv(groups, bias):
    c_in = 4 if groups != 4 else 4
    folded = fold_and_compare(conv_bn_model(groups=groups, bias=bias, c_in=c_in, c_out=8))
    assert [n.op for n in folded.nodes] == ["Conv"]


def test_depthwise_conv_strided():
    folded = fold_and_compare(conv_bn_model(groups=6, c_in=6, c_out=6, stride=2))
    assert [n.op for n in folded.nodes] == ["Conv"]


@pytest.mark.parametrize("groups,bias", [(1, True), (1, False), (2, True), (3, False)])
def test_conv_transpose(groups, bias):
    folded = fold_and_compare(conv_bn_model(groups=groups, bias=bias, c_in=6, c_out=6, op="ConvTranspose", stride=2))
    assert [n.op for n in folded.nodes] == ["ConvTranspose"]


@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("bias_shape", [None, (5,), (1, 5), ()])
def test_gemm(trans_b, bias_shape):
    rng = np.random.default_rng(4)
    weight = rng.normal(size=(5, 3) if trans_b else (3, 5)).astype(np.float32)
    inits = {"w": weight, **bn_params(5)}
    inputs = ["x", "w"]
    if bias_shape is not None:
        inits["c"] = rng.normal(size=bias_shape).astype(np.float32)
        inputs.append("c")
    nodes = [helper.make_node("Gemm", inputs, ["z"], name="fc", transB=trans_b, alpha=0.7, beta=1.3),
             bn_node("z", "y")]
    folded = fold_and_compare(make_model(nodes, [("x", [4, 3])], [("y", None)], inits))
    assert [n.op for n in folded.nodes] == ["Gemm"]


def test_standalone_bn_becomes_mul_add():
    """BN after a Relu cannot fold into anything: it becomes Mul+Add."""
    nodes = [helper.make_node("Relu", ["x"], ["r"]), bn_node("r", "y")]
    folded = fold_and_compare(make_model(nodes, [("x", [2, 5, 4, 4])], [("y", None)], bn_params(5)))
    assert [n.op for n in folded.nodes] == ["Relu", "Mul", "Add"]


def test_conv_output_with_two_readers_is_not_folded_into():
    """Folding would change what the other reader of the conv output sees: Mul+Add instead."""
    model = conv_bn_model()
    model.graph.outputs.append(model.tensor("z"))
    folded = fold_and_compare(model)
    assert sorted(n.op for n in folded.nodes) == ["Add", "Conv", "Mul"]


def test_shared_weight_is_not_mutated():
    """Two convs share one weight initializer; folding one BN must leave the other conv intact."""
    rng = np.random.default_rng(5)
    inits = {"w": rng.normal(size=(4, 4, 1, 1)).astype(np.float32), **bn_params(4)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["z1"], name="c1"),
             helper.make_node("Conv", ["x", "w"], ["z2"], name="c2"),
             bn_node("z1", "y1")]
    folded = fold_and_compare(make_model(nodes, [("x", [1, 4, 3, 3])], [("y1", None), ("z2", None)], inits))
    weights = [folded.const_value(n.inputs[1]) for n in folded.nodes]
    assert not np.array_equal(weights[0], weights[1])


def test_training_mode_bn_is_left_alone():
    bn = bn_node("z", "y", training_mode=1)
    bn.output.extend(["running_mean", "running_var"])
    nodes = [helper.make_node("Conv", ["x", "w"], ["z"]), bn]
    inits = {"w": np.ones((3, 3, 1, 1), np.float32), **bn_params(3)}
    model = make_model(nodes, [("x", [2, 3, 4, 4])], [("y", None)], inits)
    fold = FoldBatchNorm()
    result = fold(model)
    assert not result.modified
    assert any("training_mode=1" in reason for _, _, reason in fold.last_rejections)


def test_opset9_bn_folds():
    folded = fold_and_compare(conv_bn_model(opset=9))
    assert [n.op for n in folded.nodes] == ["Conv"]


def test_bn_output_that_is_graph_output_keeps_its_name():
    folded = fold_and_compare(conv_bn_model())
    assert [t.name for t in folded.graph.outputs] == ["y"]
    assert folded.nodes[0].outputs[0].name == "y"


@pytest.mark.parametrize("spatial", [1, 3])
def test_conv_1d_and_3d(spatial):
    rng = np.random.default_rng(6)
    inits = {"w": rng.normal(size=(5, 2) + (3,) * spatial).astype(np.float32), **bn_params(5)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["z"], pads=[1] * 2 * spatial), bn_node("z", "y")]
    model = make_model(nodes, [("x", [2, 2] + [5] * spatial)], [("y", None)], inits)
    assert [n.op for n in fold_and_compare(model).nodes] == ["Conv"]
