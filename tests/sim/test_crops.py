"""Crops of a convolutional block (qcompiler.sim.crops): the loss over a crop equals the full
block's loss restricted to the positions the crop compares, for a block with a stride-2
convolution, a dilated one, a pool and a residual Add, at sizes that strides do not divide."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from qcompiler.sim.crop_reach import block_reach
from qcompiler.sim.crops import plan_crops
from qcompiler.sim.interpreter import Interpreter
from qcompiler.sim.reconstruction import reconstruction_loss
from graphs import make_model

RNG = np.random.default_rng(0)


def _block(height: int, width: int):
    """x -> conv 3x3 stride 2 -> relu -> conv 3x3 dilation 2 -> (+ conv 1x1 stride 2 of x) -> maxpool 3x3 -> y."""
    weights = {"w1": RNG.normal(size=(4, 3, 3, 3)), "b1": RNG.normal(size=4), "w2": RNG.normal(size=(4, 4, 3, 3)),
               "w3": RNG.normal(size=(4, 3, 1, 1))}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["a"], strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("Conv", ["r", "w2"], ["c"], dilations=[2, 2], pads=[2, 2, 2, 2]),
             helper.make_node("Conv", ["x", "w3"], ["s"], strides=[2, 2]),
             helper.make_node("Add", ["c", "s"], ["t"]),
             helper.make_node("MaxPool", ["t"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])]
    return make_model(nodes, [("x", [None, 3, height, width])], [("y", None)],
                      {k: v.astype(np.float32) for k, v in weights.items()})


def _setup(height=23, width=30, crop=3):
    sim = Interpreter(_block(height, width))
    reach = block_reach(sim.steps_between(["x"], ["y"]), ["x"], ["y"], sim.constants)
    return sim, plan_crops(reach, ["y"], (height, width), crop)


def test_the_reach_is_the_receptive_field():
    _, crops = _setup()
    # conv s2 p1 (k3): [-1, 1] at stride 2; dilated conv p2: [-1-4, 1+4]; maxpool p1: [-5-2, 5+2]
    assert crops.outputs["y"][0].stride == 2 and (crops.outputs["y"][0].lo, crops.outputs["y"][0].hi) == (-7, 7)
    assert all(axis.length < axis.size and (axis.size - axis.length) % 2 == 0 for axis in crops.axes)


@pytest.mark.parametrize("height,width", [(23, 30), (24, 41)])
def test_cropped_loss_equals_the_full_loss_over_the_same_positions(height, width):
    sim, crops = _setup(height, width)
    forward = sim.function(["x"], ["y"])
    x = RNG.normal(size=(64, 3, height, width)).astype(np.float32)
    other = {"weights": {"w2": sim.constants["w2"] * 1.1}}  # the "quantized" block: other weights
    target, full = np.asarray(forward({}, {"x": x})[0]), np.asarray(forward(other, {"x": x})[0])
    inputs, targets, _, masks = crops.take(np.random.default_rng(1), {"x": x}, {"y": target}, None)
    out = np.asarray(forward(other, inputs)[0])
    assert out.shape == targets[0].shape and out.shape[2] < target.shape[2]
    mask = masks[0].astype(bool)
    wrong = np.abs(np.asarray(forward({}, inputs)[0]) - targets[0]).max(axis=1) > 1e-4
    assert wrong.any() and not (wrong & mask).any()  # the halo's edge differs, never where compared
    # the compared positions in full coordinates, from the crop starts that `take` drew
    drawn = np.random.default_rng(1)
    starts = [axis.starts(drawn, len(x)) // 2 for axis in crops.axes]
    region = np.zeros(target.shape[:1] + target.shape[2:], bool)
    for i, (top, left) in enumerate(zip(*starts)):
        region[i, top:top + mask.shape[1], left:left + mask.shape[2]] = mask[i]
    expected = np.sum(np.sum((full - target) ** 2, axis=1)[region]) / region.sum()
    np.testing.assert_allclose(float(reconstruction_loss([out], targets, None, masks)), expected, rtol=1e-5)
    assert region[:, 0].any() and region[:, -1].any() and region[:, :, 0].any() and region[:, :, -1].any()


def test_blocks_with_global_reach_are_not_cropped():
    nodes = [helper.make_node("Conv", ["x", "w"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("GlobalAveragePool", ["a"], ["y"])]
    sim = Interpreter(make_model(nodes, [("x", [None, 3, 32, 32])], [("y", None)],
                                 {"w": RNG.normal(size=(4, 3, 3, 3)).astype(np.float32)}))
    assert block_reach(sim.steps_between(["x"], ["y"]), ["x"], ["y"], sim.constants) is None


def test_auto_crops_only_where_they_halve_the_input():
    sim, _ = _setup(23, 30)
    reach = block_reach(sim.steps_between(["x"], ["y"]), ["x"], ["y"], sim.constants)
    assert plan_crops(reach, ["y"], (23, 30), "auto") is None  # 64 output positions: larger than the input
    assert plan_crops(reach, ["y"], (23, 30), None) is None
    big = plan_crops(reach, ["y"], (512, 384), "auto")
    assert big is not None and big.area < 0.5 and [a.length for a in big.axes] == [142, 142]
