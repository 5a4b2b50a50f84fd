"""fold-scale: per-channel Mul/Add/Sub/Div by constants after Conv, ConvTranspose and Gemm fold
into the layer; the function is unchanged (onnxruntime before and after) and misfits are left."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from graphs import bn_node, bn_params, make_model
from qcompiler import testing
from qcompiler.driver import build_pipeline
from qcompiler.passes import FoldScale

RNG = np.random.default_rng(0)


def _c(*shape):
    return RNG.uniform(0.5, 1.5, shape).astype(np.float32)


def _conv_then(ops, layer="Conv", constants=None):
    """x -> layer -> each (op, constant name, constant first?) in turn -> y."""
    if layer == "Gemm":
        nodes, inits, shape = [helper.make_node("Gemm", ["x", "w", "b"], ["z0"], transB=1)], \
            {"w": _c(6, 5), "b": _c(6)}, [3, 5]
    else:
        weight = _c(4, 6, 3, 3) if layer == "ConvTranspose" else _c(6, 4, 3, 3)
        nodes, inits, shape = [helper.make_node(layer, ["x", "w"], ["z0"], kernel_shape=[3, 3])], {"w": weight}, \
            [2, 4, 7, 7]
    for i, (op, name, first) in enumerate(ops):
        out = "y" if i == len(ops) - 1 else f"z{i + 1}"
        nodes.append(helper.make_node(op, [name, f"z{i}"] if first else [f"z{i}", name], [out]))
    inits.update(constants or {})
    return make_model(nodes, [("x", shape)], [("y", None)], inits)


def _fold(model):
    feeds = testing.random_inputs(model)
    expected = testing.run(model, feeds)
    result = FoldScale()(model.copy())
    for got, want in zip(testing.run(result.model, feeds), expected):
        testing.assert_close(got, want)
    return result


@pytest.mark.parametrize("layer", ["Conv", "ConvTranspose"])
def test_caffe_scale_layer_folds_into_the_conv(layer):
    model = _conv_then([("Mul", "s", False), ("Add", "t", False)], layer, {"s": _c(6, 1, 1), "t": _c(6, 1, 1)})
    result = _fold(model)
    assert result.modified and [n.op for n in result.model.nodes] == [layer]


def test_sub_div_either_order_and_scalars_fold():
    model = _conv_then([("Div", "d", False), ("Sub", "c", True), ("Mul", "k", True), ("Sub", "e", False)],
                       constants={"d": _c(1, 6, 1, 1), "c": _c(6, 1, 1), "k": np.float32(-2.0), "e": _c(1)})
    result = _fold(model)
    assert [n.op for n in result.model.nodes] == ["Conv"]


def test_gemm_takes_a_per_column_scale():
    result = _fold(_conv_then([("Mul", "s", False), ("Add", "t", True)], "Gemm", {"s": _c(6), "t": _c(1, 6)}))
    assert [n.op for n in result.model.nodes] == ["Gemm"]


@pytest.mark.parametrize("ops,constants", [
    ([("Mul", "s", False)], {"s": _c(1, 1, 5, 5)}),   # varies over space, not channels
    ([("Div", "s", True)], {"s": _c(6, 1, 1)}),        # c / z is not affine
    ([("Mul", "s", False)], {"s": _c(2, 6, 1, 1)}),    # varies over the batch
])
def test_what_is_not_a_per_channel_affine_map_stays(ops, constants):
    result = _fold(_conv_then(ops, constants=constants))
    assert not result.modified


def test_scale_before_a_batchnorm_folds_with_it_in_the_default_pipeline():
    nodes = [helper.make_node("Conv", ["x", "w"], ["z"], kernel_shape=[3, 3]),
             helper.make_node("Mul", ["z", "s"], ["m"]), bn_node("m", "y")]
    model = make_model(nodes, [("x", [2, 4, 7, 7])], [("y", None)], {"w": _c(6, 4, 3, 3), "s": _c(6, 1, 1),
                                                                     **bn_params(6)})
    feeds = testing.random_inputs(model)
    result = build_pipeline()(model.copy()).model
    assert [n.op for n in result.nodes] == ["Conv"]
    testing.assert_close(testing.run(result, feeds)[0], testing.run(model, feeds)[0])
