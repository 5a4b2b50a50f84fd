"""fold-pad: a zero spatial Pad before a Conv becomes the Conv's padding; the function is unchanged."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from graphs import make_model
from qcompiler import testing
from qcompiler.passes import FoldPad

W = np.random.default_rng(0).normal(0, 1, (4, 3, 3, 3)).astype(np.float32)


def _model(pads, opset, value=0.0, conv_pads=(1, 0, 0, 1), extra_reader=False):
    pad = helper.make_node("Pad", ["x"], ["p"], pads=list(pads), value=value) if opset < 11 else \
        helper.make_node("Pad", ["x", "pads", "v"], ["p"])
    nodes = [pad, helper.make_node("Conv", ["p", "w"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=list(conv_pads))]
    outputs = [("y", None)]
    if extra_reader:
        nodes.append(helper.make_node("Relu", ["p"], ["r"]))
        outputs.append(("r", None))
    inits = {"w": W} if opset < 11 else {"w": W, "pads": np.array(pads, np.int64), "v": np.float32(value)}
    return make_model(nodes, [("x", [1, 3, 9, 9])], outputs, inits, opset=opset)


@pytest.mark.parametrize("opset", [9, 13])
def test_same_padding_folds_into_the_conv(opset):
    model = _model([0, 0, 0, 0, 0, 0, 1, 1], opset)
    feeds = testing.random_inputs(model)
    result = FoldPad()(model.copy())
    assert [n.op for n in result.model.nodes] == ["Conv"]
    assert result.model.nodes[0].attrs["pads"] == [1, 0, 1, 2]
    testing.assert_close(testing.run(result.model, feeds)[0], testing.run(model, feeds)[0])


@pytest.mark.parametrize("kwargs", [dict(pads=[0, 1, 0, 0, 0, 0, 0, 0]), dict(pads=[0, 0, 1, 1, 0, 0, 1, 1], value=0.5),
                                    dict(pads=[0, 0, 1, 1, 0, 0, 1, 1], extra_reader=True)],
                         ids=["channel-axis", "non-zero-value", "other-reader"])
def test_other_pads_stay(kwargs):
    assert not FoldPad()(_model(opset=13, **kwargs)).modified
