"""Resize and Upsample of the simulator against onnxruntime: every mode and coordinate
transformation, scales or sizes, opset 10's two-input form and Upsample's attribute (7) and input (9)
forms."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from simcheck import check, x

TRANSFORMS = ["half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners", "asymmetric",
              "tf_half_pixel_for_nn"]
SCALES = [(1, 1, 2, 3), (1, 1, 0.6, 1.7)]


def _resize(variants: list[dict], scales=None, sizes=None, roi=None, opset=19):
    """One Resize node per attribute set, side by side in one model, over the same inputs."""
    inits = {"roi": np.array(roi or [], np.float32), "scales": np.array(scales or [], np.float32)}
    if sizes is not None:
        inits["sizes"] = np.array(sizes, np.int64)
    nodes = [helper.make_node("Resize", ["x", *inits], [f"y{i}"], **attrs) for i, attrs in enumerate(variants)]
    check(nodes, {"x": x(1, 2, 5, 4)}, inits, opset=opset)


@pytest.mark.parametrize("scales", SCALES, ids=str)
@pytest.mark.parametrize("transform", TRANSFORMS)
def test_resize_modes(transform, scales):
    opset = 13 if transform == "tf_half_pixel_for_nn" else 19  # removed at 18, half_pixel_symmetric new at 19
    _resize([dict(mode=mode, coordinate_transformation_mode=transform) for mode in ("nearest", "linear", "cubic")],
            scales, opset=opset)


@pytest.mark.parametrize("transform", ["half_pixel", "asymmetric", "align_corners"])
def test_resize_nearest_modes(transform):
    _resize([dict(mode="nearest", nearest_mode=mode, coordinate_transformation_mode=transform)
             for mode in ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")], sizes=[1, 2, 8, 7])


@pytest.mark.parametrize("sizes", [[1, 2, 9, 3], [1, 2, 3, 7]])
def test_resize_cubic_options(sizes):
    _resize([dict(mode="cubic", cubic_coeff_a=-0.5), dict(mode="cubic", exclude_outside=1),
             dict(mode="cubic", cubic_coeff_a=-0.5, exclude_outside=1, coordinate_transformation_mode="asymmetric")],
            sizes=sizes)


@pytest.mark.parametrize("sizes", [[1, 2, 4, 3], [1, 2, 1, 6]])
def test_resize_tf_crop_and_resize(sizes):
    _resize([dict(mode=mode, coordinate_transformation_mode="tf_crop_and_resize", extrapolation_value=-3.0)
             for mode in ("nearest", "linear", "cubic")], sizes=sizes, roi=[0, 0, -0.2, 0.3, 1, 1, 0.7, 1.4])


def test_resize_axes_and_aspect_ratio():
    inits = {"sizes": np.array([7, 3], np.int64)}
    nodes = [helper.make_node("Resize", ["x", "", "", "sizes"], [f"y_{policy}"], mode="linear", axes=[3, 2],
                              keep_aspect_ratio_policy=policy) for policy in ("stretch", "not_larger", "not_smaller")]
    check(nodes, {"x": x(1, 2, 5, 4)}, inits, opset=18)


@pytest.mark.parametrize("scales", [(1, 1, 2, 3), (1, 1, 0.6, 0.5)], ids=str)
def test_resize_opset10(scales):
    inits = {"scales": np.array(scales, np.float32)}
    nodes = [helper.make_node("Resize", ["x", "scales"], [f"y_{mode}"], mode=mode) for mode in ("nearest", "linear")]
    check(nodes, {"x": x(1, 2, 5, 4)}, inits, opset=10)


@pytest.mark.parametrize("opset", [7, 9])
def test_upsample(opset):
    scales = [1.0, 1.0, 2.0, 3.0]
    inits = {"scales": np.array(scales, np.float32)} if opset == 9 else {}
    attrs = {"scales": scales} if opset == 7 else {}
    nodes = [helper.make_node("Upsample", ["x", *inits], [f"y_{mode}"], mode=mode, **attrs)
             for mode in ("nearest", "linear")]
    check(nodes, {"x": x(1, 2, 5, 4)}, inits, opset=opset)
