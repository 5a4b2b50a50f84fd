"""The Model wrapper's edits keep the graph consistent; saving is atomic."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from graphs import make_model
from qcompiler import ir, testing
from qcompiler.errors import OutputError


def chain() -> ir.Model:
    """x -> Relu(a) -> Identity(b) -> Sigmoid(y); y is the output."""
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="relu"),
             helper.make_node("Identity", ["a"], ["b"], name="id"),
             helper.make_node("Sigmoid", ["b"], ["y"], name="sig")]
    return make_model(nodes, [("x", [2, 3])], [("y", None)])


def test_producer_and_consumers():
    model = chain()
    a = model.tensor("a")
    assert model.producer(a).name == "relu"
    assert [n.name for n in model.consumers(a)] == ["id"]
    assert model.producer(model.tensor("x")) is None
    assert model.has_single_use(a)
    assert not model.has_single_use(model.tensor("y"))


def test_bypass_mid_graph():
    model = chain()
    model.bypass(model.nodes[1])
    model.finalize()
    assert [n.op for n in model.nodes] == ["Relu", "Sigmoid"]
    assert model.nodes[1].inputs[0].name == "a"


def test_replace_all_uses_keeps_output_name():
    model = chain()
    sig = model.nodes[2]
    model.replace_all_uses(sig.outputs[0], sig.inputs[0])
    model.remove_node(sig)
    model.finalize()
    assert [t.name for t in model.graph.outputs] == ["y"]
    assert model.producer(model.graph.outputs[0]).op == "Identity"


def test_replace_with_graph_input_inserts_identity():
    nodes = [helper.make_node("Relu", ["x"], ["y"], name="relu")]
    model = make_model(nodes, [("x", [2])], [("y", None)])
    relu = model.nodes[0]
    model.replace_all_uses(relu.outputs[0], relu.inputs[0])
    model.remove_node(relu)
    model.finalize()
    assert [n.op for n in model.nodes] == ["Identity"]
    assert [t.name for t in model.graph.inputs] == ["x"]
    assert [t.name for t in model.graph.outputs] == ["y"]
    onnx.checker.check_model(model.to_onnx(), full_check=True)


def test_remove_node_refuses_a_live_node():
    model = chain()
    with pytest.raises(ValueError, match="still feeds"):
        model.remove_node(model.nodes[0])


def test_set_const_input_does_not_mutate_shared_constant():
    w = np.ones((2, 2), np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y1"], name="m1"),
             helper.make_node("MatMul", ["x", "w"], ["y2"], name="m2")]
    model = make_model(nodes, [("x", [2, 2])], [("y1", None), ("y2", None)], {"w": w})
    model.set_const_input(model.nodes[0], 1, 2 * w)
    assert np.array_equal(model.const_value(model.nodes[1].inputs[1]), w)
    assert np.array_equal(model.const_value(model.nodes[0].inputs[1]), 2 * w)
    assert model.nodes[0].inputs[1].name != "w"


def test_unique_name():
    model = chain()
    assert model.unique_name("fresh") == "fresh"
    assert model.unique_name("a") == "a_1"


def test_fingerprint_sees_constant_values():
    nodes = [helper.make_node("Add", ["x", "c"], ["y"])]
    model = make_model(nodes, [("x", [2])], [("y", None)], {"c": np.ones(2, np.float32)})
    before = model.fingerprint()
    model.set_const_input(model.nodes[0], 1, np.full(2, 2, np.float32))
    assert model.fingerprint() != before


def test_save_is_atomic_and_round_trips(tmp_path):
    model = chain()
    path = ir.save(model, tmp_path / "m.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
    again = ir.load(path)
    feeds = testing.random_inputs(model)
    testing.assert_close(testing.run(again, feeds)[0], testing.run(model, feeds)[0])


def test_save_large_model_uses_external_data(tmp_path):
    weight = np.random.default_rng(0).normal(size=(64, 64)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"])]
    model = make_model(nodes, [("x", [1, 64])], [("y", None)], {"w": weight})
    path = ir.save(model, tmp_path / "big.onnx", external_data_threshold=1000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx", "big.onnx.data"]
    assert path.stat().st_size < weight.nbytes
    again = ir.load(path)
    assert np.array_equal(again.const_value(again.nodes[0].inputs[1]), weight)


def test_save_into_missing_folder_is_an_output_error(tmp_path):
    with pytest.raises(OutputError, match="does not exist"):
        ir.save(chain(), tmp_path / "no" / "m.onnx")


def test_failed_save_leaves_nothing(tmp_path, monkeypatch):
    def explode(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(onnx, "save_model", explode)
    with pytest.raises(KeyboardInterrupt):
        ir.save(chain(), tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_high_ir_version_is_written_runnable(tmp_path):
    model = chain()
    model.ir_version = 14
    assert model.to_onnx().ir_version <= 10
    testing.run(model, testing.random_inputs(model))


@pytest.mark.parametrize("kind", ["int4", "uint4"])
def test_int4_constants_are_packed_as_onnx_specifies(kind):
    import ml_dtypes
    from onnx import numpy_helper

    values = np.array([[-8, 7, 0], [1, -1, 3]] if kind == "int4" else [[0, 15, 7], [1, 2, 3]], dtype=getattr(ml_dtypes, kind))
    proto = ir.model.int4_tensor_proto(values, "w")
    assert proto.data_type == getattr(onnx.TensorProto, kind.upper())
    assert len(proto.raw_data) == 3  # six values, two per byte
    assert np.array_equal(numpy_helper.to_array(proto).astype(np.int8), values.astype(np.int8))
