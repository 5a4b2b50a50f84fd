"""The QDQ model, run by onnxruntime, against our numpy simulation of it: within 1 LSB."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from graphs import ROOT, make_model
from qcompiler import ir
from qcompiler.driver import quantize
from qcompiler.executor import session
from qcompiler.quant import dequantize, fake_quantize, quantize as quantize_values
from qcompiler.quant.presets import load_config

SUBSET = ROOT / "models" / "fashion_mnist_subset.npz"


def mlp():
    rng = np.random.default_rng(0)
    inits = {"w1": rng.normal(size=(16, 8)).astype(np.float32), "b1": rng.normal(size=16).astype(np.float32),
             "w2": rng.normal(size=(4, 16)).astype(np.float32) / 4, "b2": rng.normal(size=4).astype(np.float32)}
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1, name="fc1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], transB=1, name="fc2")]
    return make_model(nodes, [("x", ["N", 8])], [("y", None)], inits)


@pytest.mark.parametrize("preset", ["w8a8", "w8a8-per-tensor", "w4a8", "w4a4", "w2a4"])
def test_mlp_qdq_equals_numpy_simulation(preset):
    """x -> fq -> Gemm(fq W1, int32 b1) -> Relu -> fq -> Gemm(fq W2, int32 b2) -> fq, in numpy."""
    x = np.random.default_rng(1).normal(size=(200, 8)).astype(np.float32)
    config = load_config(None, preset, None, ["*:wbits=%d" % (2 if preset == "w2a4" else 4)] if preset.startswith("w") and preset[1] in "24" else [])
    result = quantize(mlp(), {"x": x}, config, progress=False)
    a = result.annotated
    q = {name: (tq.params, tq.spec) for name, tq in a.quant.items()}

    def fq(name, value):
        return fake_quantize(value, *q[name])

    def bias(name, act, weight):
        b = a.const_value(a.tensor(name))
        scale = (q[act][0].scale.astype(np.float64) * q[weight][0].scale.astype(np.float64)).astype(np.float32)
        return (np.rint(b.astype(np.float64) / scale).astype(np.int32).astype(np.float32) * scale).astype(np.float32)

    w1, w2 = (fq(n, a.const_value(a.tensor(n))) for n in ("w1", "w2"))
    h = fq("x", x) @ w1.T + bias("b1", "x", "w1")
    r = fq("r", np.maximum(h, 0))
    y = fq("y", r @ w2.T + bias("b2", "r", "w2"))
    (got,) = session(result.qdq, optimize=False).run(None, {"x": x})
    lsb = float(q["y"][0].scale)
    assert np.max(np.abs(got - y)) <= lsb * (1 + 1e-5)
    assert np.mean(got == y) > 0.99


@pytest.mark.parametrize("model_name,preset", [("fashion_resnet8", "w8a8"), ("fashion_mobilenetv2", "w8a8"),
                                                ("fashion_resnet8", "w4a4"), ("fashion_mobilenetv2", "w2a4")])
def test_every_quantized_tensor_matches_numpy_within_one_lsb(model_name, preset):
    """For every activation, onnxruntime's DQ(Q(t)) against numpy's fake_quantize of the same t
    (read from the QDQ model itself), and every weight's DQ against numpy's dequantize."""
    result = quantize(ir.load(ROOT / "models" / f"{model_name}.onnx"), SUBSET, load_config(None, preset, None, []),
                      calib_count=32, progress=False)
    qdq = result.qdq
    activations = {n: tq for n, tq in result.annotated.quant.items() if tq.role == "activation"}
    quantize_inputs = {n.outputs[0].name: n.inputs[0].name for n in qdq.nodes if n.op == "QuantizeLinear"}
    pairs = []
    for name, tq in activations.items():
        dq_name = result.dequantized[name]
        q_out = next(t.name for t in qdq.tensor(dq_name).inputs[0].inputs[:1])
        source = quantize_inputs.get(q_out) or quantize_inputs[qdq.producer(qdq.tensor(q_out)).inputs[0].name]
        pairs.append((name, source, dq_name))
    data = np.load(SUBSET)["input"][:16]
    outputs = session(qdq, extra_outputs=[p[1] for p in pairs] + [p[2] for p in pairs]).run(
        [p[1] for p in pairs] + [p[2] for p in pairs], {"input": data})
    sources, dequantized = outputs[:len(pairs)], outputs[len(pairs):]
    for (name, _, _), x, got in zip(pairs, sources, dequantized):
        tq = activations[name]
        expected = fake_quantize(x, tq.params, tq.spec)
        assert np.max(np.abs(got - expected)) <= float(tq.params.scale) * (1 + 1e-6), name
    weights = {n: tq for n, tq in result.annotated.quant.items() if tq.role == "weight"}
    dq_weights = [n.outputs[0].name for n in qdq.nodes if n.op == "DequantizeLinear" and n.outputs[0].name.removesuffix("_dq") in weights]
    got = session(qdq, extra_outputs=dq_weights).run(dq_weights, {"input": data})
    for name, value in zip(dq_weights, got):
        tq = weights[name.removesuffix("_dq")]
        w = result.annotated.const_value(result.annotated.tensor(name.removesuffix("_dq")))
        assert np.array_equal(value, dequantize(quantize_values(w, tq.params, tq.spec), tq.params, tq.spec)), name


@pytest.mark.parametrize("preset,opset,weight_type", [("w8a8", 17, onnx.TensorProto.INT8), ("w4a8", 21, onnx.TensorProto.INT4),
                                                      ("w2a4", 21, onnx.TensorProto.INT4)])
def test_qdq_format(preset, opset, weight_type):
    result = quantize(ir.load(ROOT / "models" / "fashion_resnet8.onnx"), SUBSET, load_config(None, preset, None, []),
                      calib_count=16, progress=False)
    proto = result.qdq.to_onnx()
    onnx.checker.check_model(proto, full_check=True)
    assert proto.opset_import[0].version == opset
    inits = {i.name: i for i in proto.graph.initializer}
    types = {inits[n.input[0]].data_type for n in proto.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits}
    assert weight_type in types and onnx.TensorProto.INT32 in types  # weights and biases
    assert not any(n.op_type in ("BatchNormalization", "QLinearConv") for n in proto.graph.node)
    if preset == "w2a4":
        # 4-bit activations: uint8 clipped to [0, 15] (see insert_qdq.py for why not UINT4)
        act_types = {inits[n.input[2]].data_type for n in proto.graph.node if n.op_type == "QuantizeLinear"}
        assert act_types == {onnx.TensorProto.UINT8}
        grid = {int(onnx.numpy_helper.to_array(inits[n.input[2]])) for n in proto.graph.node if n.op_type == "Clip"
                and n.input[2] in inits and inits[n.input[2]].data_type == onnx.TensorProto.UINT8}
        assert grid == {15}


def test_two_and_three_bit_activations_are_clipped_to_their_grid():
    x = np.random.default_rng(2).normal(size=(64, 8)).astype(np.float32)
    config = load_config(None, "w8a8", None, ["fc*:abits=3"])
    result = quantize(mlp(), {"x": x}, config, progress=False)
    clips = [n for n in result.qdq.nodes if n.op == "Clip" and n.inputs[0].dtype == np.uint8]
    assert clips and all(int(result.qdq.const_value(c.inputs[2])) == 7 for c in clips)
    (got,) = session(result.qdq, optimize=False).run(None, {"x": x})
    assert np.isfinite(got).all()


def test_sixteen_bit_activations_and_weights():
    """16-bit quantizers: int16 weights and uint16 activations at opset 21, near-float accuracy."""
    x = np.random.default_rng(3).normal(size=(64, 8)).astype(np.float32)
    result = quantize(mlp(), {"x": x}, load_config(None, "w8a8", "minmax", ["*:wbits=16,abits=16"]), progress=False)
    proto = result.qdq.to_onnx()
    assert proto.opset_import[0].version == 21
    inits = {i.name: i.data_type for i in proto.graph.initializer}
    assert onnx.TensorProto.INT16 in inits.values() and onnx.TensorProto.UINT16 in inits.values()
    quant = result.annotated.quant
    assert quant["x"].spec.bits == 16 and quant["w1"].spec.bits == 16
    assert quant["y"].spec.bits == 8  # an override sets a layer's weight and input, not its output
    (got,) = session(result.qdq, optimize=False).run(None, {"x": x})
    (expected,) = session(result.float_model).run(None, {"x": x})
    assert np.max(np.abs(got - expected)) <= float(quant["y"].params.scale)  # the 8-bit output's LSB


def test_weight_only_matmul_runs_as_written():
    """onnxruntime's QDQ fusion would quantize x to 8 bits on the fly for DQ(W, axis=1) -> MatMul
    (0.6% error here); our sessions run what the QDQ model says."""
    rng = np.random.default_rng(0)
    q, scale = rng.integers(-7, 8, size=(24, 5)).astype(np.int8), (rng.random(5) + 0.5).astype(np.float32)
    nodes = [helper.make_node("DequantizeLinear", ["wq", "s", "z"], ["w"], axis=1), helper.make_node("MatMul", ["x", "w"], ["y"])]
    model = make_model(nodes, [("x", ["N", 24])], [("y", None)], {"wq": q, "s": scale, "z": np.zeros(5, np.int8)}, opset=21)
    x = rng.normal(size=(64, 24)).astype(np.float32)
    expected = x @ (q * scale).astype(np.float32)
    (got,) = session(model).run(None, {"x": x})
    assert np.max(np.abs(got - expected)) <= 1e-5 * np.abs(expected).max()
