"""One test per class of bad input, through the command as a user runs it: the documented exit
code, one line naming what is wrong, and no output left behind."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from cli_helpers import RESNET, listing, one_error, qcompiler


def _conv_model(path, weight_channels: int = 3, node_name: str = "conv"):
    weight = np.random.RandomState(0).randn(4, weight_channels, 3, 3).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], name=node_name)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 6, 6])],
        [numpy_helper.from_array(weight, "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


# ---- invalid or unsafe models: exit 3 ---------------------------------------------------------

def test_a_file_that_is_not_onnx(tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"\x08\x07garbage" * 100)
    one_error(qcompiler("optimize", bad, "-o", tmp_path / "out" / "m.onnx"), 3, str(bad))
    assert not (tmp_path / "out").exists()


def test_a_conv_whose_weight_does_not_fit_its_input(tmp_path):
    model = _conv_model(tmp_path / "model.onnx", weight_channels=8, node_name="conv\nevil")
    line = one_error(qcompiler("optimize", model, "-o", tmp_path / "o.onnx"), 3, "conv", "evil", "channels")
    assert "\n" not in line
    assert not (tmp_path / "o.onnx").exists()


def test_malformed_external_data_offsets(tmp_path):
    model = onnx.load(RESNET)
    onnx.save(model, tmp_path / "model.onnx", save_as_external_data=True, location="weights.bin", size_threshold=0)
    model = onnx.load(tmp_path / "model.onnx", load_external_data=False)
    tensor = next(t for t in model.graph.initializer if t.data_location == TensorProto.EXTERNAL)
    next(e for e in tensor.external_data if e.key == "offset").value = "twelve"
    onnx.save(model, tmp_path / "model.onnx")
    one_error(qcompiler("optimize", tmp_path / "model.onnx", "-o", tmp_path / "o.onnx"), 3, "offset", "whole numbers")


@pytest.mark.parametrize("value", [0.0, -0.5, float("nan"), float("inf")])
def test_qdq_scales_that_cannot_be_right(tmp_path, qdq_model, value):
    model = onnx.load(qdq_model)
    tensor = next(t for t in model.graph.initializer if t.name.endswith("scale"))
    array = numpy_helper.to_array(tensor).copy()
    array.flat[0] = value
    tensor.CopyFrom(numpy_helper.from_array(array, tensor.name))
    onnx.save(model, tmp_path / "bad.qdq.onnx")
    one_error(qcompiler("compile", tmp_path / "bad.qdq.onnx", "-o", tmp_path / "lib"), 3, tensor.name, "finite and positive")
    assert not (tmp_path / "lib").exists()


def test_library_folders_are_checked_against_their_model_json(tmp_path, library):
    broken = tmp_path / "lib"
    broken.mkdir()
    for name, data in listing(library).items():
        (broken / name).write_bytes(data)
    meta = json.loads((broken / "model.json").read_text())
    data = tmp_path / "x.npz"
    np.savez(data, input=np.zeros((1, 1, 28, 28), np.float32))
    (broken / "model.json").write_text(json.dumps({**meta, "batch": "one"}))
    one_error(qcompiler("run", broken, "--input", data), 3, "'batch'")
    (broken / "model.json").write_text("{not json")
    one_error(qcompiler("run", broken, "--input", data), 3, "not readable as JSON")
    (broken / "model.json").write_text(json.dumps(meta))
    (broken / "model.so").write_bytes((library / "model.so").read_bytes()[:-10])
    one_error(qcompiler("run", broken, "--input", data), 3, "does not match")


# ---- calibration data: exit 5 -----------------------------------------------------------------

def _npy_with_header(path, shape, dtype="<f4", payload=b"\0" * 64):
    header = repr({"descr": dtype, "fortran_order": False, "shape": shape}).encode()
    header += b" " * (63 - (len(header) + 10) % 64) + b"\n"
    path.write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + payload)
    return path


def test_a_forged_npy_header_is_refused_before_allocation(tmp_path):
    forged = _npy_with_header(tmp_path / "calib.npy", (10**6, 1, 28, 28))
    one_error(qcompiler("quantize", RESNET, "--calib", forged, "-o", tmp_path / "out"), 5, "truncated or forged")
    assert not (tmp_path / "out").exists()


def test_a_corrupt_npz_member(tmp_path):
    good = tmp_path / "good.npz"
    np.savez_compressed(good, input=np.random.rand(4, 1, 28, 28).astype(np.float32))
    data = bytearray(good.read_bytes())
    data[80:120] = b"\xff" * 40   # inside the compressed member
    (tmp_path / "bad.npz").write_bytes(bytes(data))
    one_error(qcompiler("quantize", RESNET, "--calib", tmp_path / "bad.npz", "-o", tmp_path / "out"), 5, "bad.npz")


def test_values_beyond_float32_are_named(tmp_path):
    data = np.random.rand(4, 1, 28, 28)
    data[2, 0, 0, 0] = 1e300
    np.savez(tmp_path / "calib.npz", input=data)
    one_error(qcompiler("quantize", RESNET, "--calib", tmp_path / "calib.npz", "-o", tmp_path / "out"), 5,
              "beyond float32")


def test_an_image_over_the_pixel_limit(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("L", (9000, 9000)).save(folder / "huge.png")
    one_error(qcompiler("quantize", RESNET, "--calib", folder, "-o", tmp_path / "out"), 5, "huge.png", "pixels")


# ---- the command line: exit 2 -----------------------------------------------------------------

@pytest.mark.parametrize("flag,value,fragment", [
    ("--batch-size", "-4", "must be positive"),
    ("--calib-count", "-1", "must be positive"),
    ("--calib-count", "ten", "not a whole number"),
    ("--preprocess", "crop=abc", "pixel count"),
    ("--preprocess", "std=0", "none zero"),
])
def test_bad_numbers_on_the_command_line(tmp_path, calib, flag, value, fragment):
    one_error(qcompiler("quantize", RESNET, "--calib", calib, "-o", tmp_path / "out", flag, value), 2, flag, fragment)
    assert not (tmp_path / "out").exists()
