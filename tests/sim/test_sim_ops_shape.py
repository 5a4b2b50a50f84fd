"""Shape, layout and indexing ops of the simulator against onnxruntime, at the opsets where their
signatures changed (attribute vs input axes/split/starts), over the attributes that change results."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from simcheck import check, x

I64 = np.iinfo(np.int64)


def ints(*values) -> np.ndarray:
    return np.array(values, np.int64)


def test_shape():
    check([helper.make_node("Shape", ["x"], ["y"])], {"x": x(2, 3, 4)}, opset=13)


def test_shape_start_end_opset15():
    variants = [dict(start=1), dict(end=-1), dict(start=-10, end=10), dict(start=2, end=1)]
    check([helper.make_node("Shape", ["x"], [f"y{i}"], **attrs) for i, attrs in enumerate(variants)],
          {"x": x(2, 3, 4)}, opset=15)


def test_size():
    check([helper.make_node("Size", ["x"], ["y"])], {"x": x(2, 3, 4)})


GATHERS = [(0, ints(1, 0, 1)), (1, ints(-1, 0)), (-1, ints([0, 2], [-1, 1])), (2, np.array(-2, np.int64))]


def test_gather_axes_and_negative_indices():
    nodes = [helper.make_node("Gather", ["x", f"i{k}"], [f"y{k}"], axis=axis) for k, (axis, _) in enumerate(GATHERS)]
    check(nodes, {"x": x(2, 3, 4), **{f"i{k}": indices for k, (_, indices) in enumerate(GATHERS)}})


def test_gather_int_data():
    data = np.arange(24, dtype=np.int64).reshape(4, 6)
    check([helper.make_node("Gather", ["x", "i"], ["y"], axis=1)], {"x": data, "i": ints(5, -6, 2)})


SLICES = [  # starts, ends, axes, steps
    (ints(1, 0), ints(3, 10), None, None),
    (ints(0, -1), ints(I64.max, 0), ints(1, 2), ints(2, -1)),
    (ints(-1), ints(I64.min), ints(-3), ints(-1)),
    (ints(10, -100), ints(-1, 3), ints(0, 1), ints(1, 1)),
    (ints(3), ints(0), ints(2), ints(-2)),
]


@pytest.mark.parametrize("starts,ends,axes,steps", SLICES)
def test_slice_inputs(starts, ends, axes, steps):
    inits = {k: v for k, v in (("s", starts), ("e", ends), ("a", axes), ("p", steps)) if v is not None}
    names = ["x", "s", "e", "a" if axes is not None else "", "p" if steps is not None else ""]
    check([helper.make_node("Slice", names, ["y"])], {"x": x(3, 4, 5)}, inits, opset=13)


def test_slice_attributes_opset9():
    variants = [dict(starts=[1, 0], ends=[3, 10]), dict(starts=[-2], ends=[I64.max], axes=[-1])]
    check([helper.make_node("Slice", ["x"], [f"y{i}"], **attrs) for i, attrs in enumerate(variants)],
          {"x": x(3, 4, 5)}, opset=9)


def test_cast_from_float():
    """Toward zero to integers, nonzero to True, rounded to float16 (and kept float32)."""
    data = np.array([[-2.7, -0.5, 0.0, 0.4, 1.5, 3.9]], np.float32) * np.array([[1], [-1]], np.float32)
    targets = [TensorProto.INT64, TensorProto.INT32, TensorProto.BOOL, TensorProto.FLOAT16, TensorProto.DOUBLE]
    nodes = [helper.make_node("Cast", ["x"], [f"y{to}"], to=to) for to in targets]
    nodes.append(helper.make_node("Cast", ["positive"], ["y_uint8"], to=TensorProto.UINT8))
    check(nodes, {"x": data, "positive": np.abs(data)})


@pytest.mark.parametrize("data", [np.array([[0, -3, 7]], np.int64), np.array([True, False]),
                                  np.arange(3, dtype=np.uint8)])
def test_cast_to_float(data):
    check([helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT)], {"x": data})


def test_cast_like():
    check([helper.make_node("CastLike", ["x", "like"], ["y"])], {"x": x(2, 3) * 4, "like": ints(1)}, opset=15)


@pytest.mark.parametrize("opset,attrs,inits,count", [
    (11, dict(axis=1, split=[1, 3]), {}, 2),
    (11, dict(axis=-1), {}, 3),
    (13, dict(axis=1), {"s": ints(2, 0, 2)}, 3),
    (13, dict(axis=0), {}, 2),
    (18, dict(axis=2, num_outputs=2), {}, 2),  # 5 into 3 + 2
])
def test_split(opset, attrs, inits, count):
    outputs = [f"y{i}" for i in range(count)]
    data = x(2, 4, 6) if attrs["axis"] == -1 else x(2, 4, 5)
    check([helper.make_node("Split", ["x", *inits], outputs, **attrs)], {"x": data}, inits, opset=opset,
          outputs=outputs)


@pytest.mark.parametrize("shape", [ints(2, 3, 4), ints(3, 1), ints(2, 1, 1, 4)])
def test_expand(shape):
    check([helper.make_node("Expand", ["x", "s"], ["y"])], {"x": x(3, 1)}, {"s": shape})


def test_tile():
    check([helper.make_node("Tile", ["x", "r"], ["y"])], {"x": x(2, 3)}, {"r": ints(2, 3)})


@pytest.mark.parametrize("values", [(np.int64(2), np.int64(11), np.int64(3)), (np.int32(5), np.int32(-4), np.int32(-2)),
                                    (np.float32(1.0), np.float32(3.2), np.float32(0.5))])
def test_range(values):
    inits = dict(zip("sld", (np.array(v) for v in values)))
    check([helper.make_node("Range", ["s", "l", "d"], ["y"])], {}, inits, opset=11)


@pytest.mark.parametrize("value", [None, helper.make_tensor("v", TensorProto.INT32, [1], [7]),
                                   helper.make_tensor("v", TensorProto.FLOAT, [1], [0.5])])
def test_constant_of_shape(value):
    attrs = {} if value is None else {"value": value}
    check([helper.make_node("ConstantOfShape", ["s"], ["y"], **attrs)], {}, {"s": ints(2, 3)}, opset=9)


def test_depth_to_space():
    nodes = [helper.make_node("DepthToSpace", ["x"], [f"y_{mode}"], blocksize=2, mode=mode) for mode in ("DCR", "CRD")]
    check(nodes, {"x": x(2, 8, 3, 4)}, opset=13)


def test_space_to_depth():
    check([helper.make_node("SpaceToDepth", ["x"], ["y"], blocksize=2)], {"x": x(2, 3, 4, 6)})


LAYOUTS = {  # opset: (op, attributes, initializers)
    11: [("Squeeze", dict(axes=[1, -1]), {}), ("Unsqueeze", dict(axes=[0, -1]), {})],
    13: [("Squeeze", {}, {"a": ints(-1)}), ("Squeeze", {}, {}), ("Unsqueeze", {}, {"b": ints(3, 0)}),
         ("Flatten", dict(axis=-2), {}), ("Flatten", dict(axis=0), {}), ("Transpose", {}, {})],
    14: [("Reshape", dict(allowzero=0), {"s": ints(0, -1, 2)})],
}


@pytest.mark.parametrize("opset", LAYOUTS)
def test_layout(opset):
    """Squeeze/Unsqueeze axes as attributes (opset 11) and as inputs (13), Flatten, Transpose, Reshape."""
    nodes = [helper.make_node(op, ["x", *inits], [f"y{i}_{op}"], **attrs)
             for i, (op, attrs, inits) in enumerate(LAYOUTS[opset])]
    inits = {k: v for _, _, values in LAYOUTS[opset] for k, v in values.items()}
    check(nodes, {"x": x(2, 1, 2, 1)}, inits, opset=opset)


def test_concat_ints_negative_axis():
    check([helper.make_node("Concat", ["a", "b"], ["y"], axis=-1)], {"a": ints([1, 2]), "b": ints([3])})


@pytest.mark.parametrize("opset,outputs", [(7, ["y"]), (13, ["y", "mask"])])
def test_dropout_inference(opset, outputs):
    check([helper.make_node("Dropout", ["x"], outputs)], {"x": x(2, 3)}, opset=opset, outputs=outputs)


def test_identity_keeps_ints():
    check([helper.make_node("Identity", ["x"], ["y"])], {"x": ints([1, 2], [3, 4])})
