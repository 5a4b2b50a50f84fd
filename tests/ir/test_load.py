"""The loader refuses what it must, each time with a one-line message and its exit code."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from graphs import make_proto
from qcompiler import ir, testing
from qcompiler.cli import main
from qcompiler.errors import InvalidModelError, UnsupportedModelError


def cli(*args: str, capsys) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_refused(path, exit_code: int, fragment: str, capsys) -> str:
    code, out, err = cli("inspect", str(path), capsys=capsys)
    assert code == exit_code, err
    assert out == ""
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    assert fragment in err, err
    assert str(path) in err
    return err


def gemm_proto(opset: int = 17) -> onnx.ModelProto:
    weight = np.arange(12, dtype=np.float32).reshape(4, 3)
    nodes = [helper.make_node("Gemm", ["x", "w"], ["y"], transB=1)]
    return make_proto(nodes, [("x", [2, 3])], [("y", None)], {"w": weight}, opset=opset)


@pytest.fixture
def external_model(tmp_path):
    """A model whose weight lives in weights.bin beside it; returns (model path, folder)."""
    folder = tmp_path / "model"
    folder.mkdir()
    proto = gemm_proto()
    onnx.save_model(proto, str(folder / "model.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    return folder / "model.onnx", folder


def set_location(path, location: str, **extra) -> None:
    proto = onnx.load_model(str(path), load_external_data=False)
    for tensor in proto.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            entries = {e.key: e.value for e in tensor.external_data}
            entries.update(location=location, **{k: str(v) for k, v in extra.items()})
            del tensor.external_data[:]
            for key, value in entries.items():
                tensor.external_data.add(key=key, value=value)
    onnx.save_model(proto, str(path))


def test_external_data_inside_the_folder_loads(external_model):
    path, _ = external_model
    model = ir.load(path)
    assert np.array_equal(model.const_value(model.nodes[0].inputs[1]), np.arange(12, dtype=np.float32).reshape(4, 3))


def test_external_data_parent_path(external_model, capsys):
    path, folder = external_model
    (folder.parent / "outside.bin").write_bytes((folder / "weights.bin").read_bytes())
    set_location(path, "../outside.bin")
    assert_refused(path, 3, "'..'", capsys)


def test_external_data_absolute_path(external_model, capsys):
    path, folder = external_model
    set_location(path, str((folder / "weights.bin").resolve()))
    assert_refused(path, 3, "absolute paths are refused", capsys)


def test_external_data_symlink(external_model, tmp_path, capsys):
    path, folder = external_model
    target = tmp_path / "elsewhere.bin"
    (folder / "weights.bin").rename(target)
    (folder / "weights.bin").symlink_to(target)
    assert_refused(path, 3, "symbolic link", capsys)


def test_external_data_symlinked_folder(external_model, tmp_path, capsys):
    path, folder = external_model
    other = tmp_path / "other"
    other.mkdir()
    (folder / "weights.bin").rename(other / "weights.bin")
    (folder / "sub").symlink_to(other)
    set_location(path, "sub/weights.bin")
    assert_refused(path, 3, "symbolic link", capsys)


def test_external_data_hard_link(external_model, tmp_path, capsys):
    path, folder = external_model
    os.link(folder / "weights.bin", tmp_path / "second_name.bin")
    assert_refused(path, 3, "hard link", capsys)


def test_external_data_offset_out_of_range(external_model, capsys):
    path, _ = external_model
    set_location(path, "weights.bin", offset=1000)
    assert_refused(path, 3, "exceeds the file", capsys)


def test_external_data_truncated_file(external_model, capsys):
    path, folder = external_model
    data = (folder / "weights.bin").read_bytes()
    (folder / "weights.bin").write_bytes(data[:20])
    assert_refused(path, 3, "truncated", capsys)


def test_external_data_missing_file(external_model, capsys):
    path, folder = external_model
    (folder / "weights.bin").unlink()
    assert_refused(path, 3, "does not exist", capsys)


def test_truncated_model(tmp_path, capsys):
    data = gemm_proto().SerializeToString()
    path = tmp_path / "truncated.onnx"
    path.write_bytes(data[: len(data) // 2])
    assert_refused(path, 3, "", capsys)


def test_empty_file(tmp_path, capsys):
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")
    assert_refused(path, 3, "empty (0 bytes)", capsys)


def test_not_onnx(tmp_path, capsys):
    path = tmp_path / "notes.onnx"
    path.write_text("this is not a model\n" * 20)
    assert_refused(path, 3, "not a readable ONNX protobuf", capsys)


def test_missing_file(tmp_path, capsys):
    assert_refused(tmp_path / "nope.onnx", 3, "no such file", capsys)


@pytest.mark.parametrize("opset", [7, 8, ir.MAX_OPSET + 1, onnx.defs.onnx_opset_version()])
def test_opsets_the_passes_do_not_run_are_converted_and_said(opset, tmp_path, caplog):
    path = tmp_path / "model.onnx"
    weight = np.arange(12, dtype=np.float32).reshape(3, 4) - 6
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])]
    onnx.save_model(make_proto(nodes, [("x", [2, 3])], [("y", None)], {"w": weight}, opset=opset), str(path))
    with caplog.at_level("WARNING"):
        model = ir.load(path)
    assert model.opset == min(max(opset, ir.MIN_OPSET), ir.MAX_OPSET)
    assert f"opset {opset} converted to opset {model.opset}" in caplog.text
    x = np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_allclose(testing.run(model, {"x": x})[0], np.maximum(x @ weight, 0), rtol=1e-6)


def test_an_opset_the_converter_cannot_carry_is_refused_naming_the_op(tmp_path, capsys):
    path = tmp_path / "old.onnx"
    proto = gemm_proto()   # Gemm without C: valid from opset 11, not at 8 (the converter keeps it as is)
    proto.opset_import[0].version = 8
    onnx.save_model(proto, str(path))
    assert_refused(path, 4, "version converter cannot take it to opset 9: Node with schema(::Gemm:9)", capsys)


def test_opset_unknown_to_onnx_is_refused(tmp_path, capsys):
    path = tmp_path / "new.onnx"
    proto = gemm_proto()
    proto.opset_import[0].version = onnx.defs.onnx_opset_version() + 1
    onnx.save_model(proto, str(path))
    assert_refused(path, 4, f"opset {onnx.defs.onnx_opset_version() + 1} is outside the range", capsys)


def test_opset_below_range(tmp_path, capsys):
    proto = gemm_proto()
    proto.opset_import[0].version = 6
    path = tmp_path / "old.onnx"
    onnx.save_model(proto, str(path))
    assert_refused(path, 4, "opset 6 is outside", capsys)


def test_unknown_ops_are_listed_at_once(tmp_path, capsys):
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="ok"),
             helper.make_node("FancyNorm", ["a"], ["b"], name="norm1"),
             helper.make_node("FancyNorm", ["b"], ["c"], name="norm2"),
             helper.make_node("Gizmo", ["c"], ["y"], name="giz", domain="com.example")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    path = tmp_path / "custom.onnx"
    onnx.save_model(proto, str(path))
    err = assert_refused(path, 4, "2 op type(s)", capsys)
    assert "FancyNorm (nodes: norm1, norm2)" in err
    assert "com.example::Gizmo (nodes: giz)" in err


def test_checker_failure_is_one_line(tmp_path, capsys):
    proto = gemm_proto()
    proto.graph.node[0].input[1] = "missing_weight"
    path = tmp_path / "broken.onnx"
    onnx.save_model(proto, str(path))
    assert_refused(path, 3, "checker rejects", capsys)


def test_api_raises_typed_errors(tmp_path):
    (tmp_path / "empty.onnx").write_bytes(b"")
    with pytest.raises(InvalidModelError):
        ir.load(tmp_path / "empty.onnx")
    proto = gemm_proto()
    proto.opset_import[0].version = 3
    onnx.save_model(proto, str(tmp_path / "new.onnx"))
    with pytest.raises(UnsupportedModelError):
        ir.load(tmp_path / "new.onnx")


def test_shapes_are_inferred(tmp_path):
    proto = gemm_proto()
    proto.graph.node[0].output[0] = "h"
    proto.graph.node.append(helper.make_node("Relu", ["h"], ["y"]))
    del proto.graph.value_info[:]
    path = tmp_path / "m.onnx"
    onnx.save_model(proto, str(path))
    model = ir.load(path)
    assert list(model.tensor("h").shape) == [2, 4]


def test_initializer_values_round_trip(tmp_path):
    proto = gemm_proto()
    path = tmp_path / "m.onnx"
    onnx.save_model(proto, str(path))
    model = ir.load(path)
    again = model.to_onnx()
    assert np.array_equal(numpy_helper.to_array(again.graph.initializer[0]), numpy_helper.to_array(proto.graph.initializer[0]))
