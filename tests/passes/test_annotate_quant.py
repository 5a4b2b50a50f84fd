"""Placement rules: what annotate-quant quantizes, at which bits, and which tensors share params."""

from __future__ import annotations

import numpy as np
from onnx import helper

from graphs import ROOT, make_model
from qcompiler import ir
from qcompiler.driver import quantize
from qcompiler.passes import AnnotateQuant, Canonicalize, FoldBatchNorm
from qcompiler.quant.presets import load_config

SUBSET = ROOT / "models" / "fashion_mnist_subset.npz"


def annotated_resnet(preset="w8a8"):
    model = FoldBatchNorm()(Canonicalize()(ir.load(ROOT / "models" / "fashion_resnet8.onnx")).model).model
    return AnnotateQuant(load_config(None, preset, None, []))(model).model


def test_relu_is_fused_and_residual_adds_are_quantized():
    model = annotated_resnet()
    for node in model.nodes:
        if node.op == "Conv" and model.consumers(node.outputs[0])[0].op == "Relu":
            assert node.outputs[0].name not in model.quant, "quantize after the Relu, not between"
        if node.op == "Relu":
            assert node.outputs[0].name in model.quant
        if node.op == "Add":
            assert all(t.name in model.quant for t in node.inputs), "both residual inputs"
    weights = [n for n, tq in model.quant.items() if tq.role == "weight"]
    assert len(weights) == 10 and all(model.quant[w].spec.axis == 0 for w in weights)


def test_pass_through_ops_share_their_input_params():
    """Flatten passes the pooled values on at their scale; the global pool itself gets its own
    (a mean on its input's grid is an exact tie too often: _is_global_mean)."""
    model = annotated_resnet()
    gap = next(n for n in model.nodes if n.op == "GlobalAveragePool")
    flatten = next(n for n in model.nodes if n.op == "Flatten")
    assert model.quant[gap.outputs[0].name].group == model.quant[flatten.outputs[0].name].group
    assert model.quant[gap.inputs[0].name].group != model.quant[gap.outputs[0].name].group


def test_edge_layers_stay_8bit_in_low_bit_presets():
    model = annotated_resnet("w4a4")
    layers = [n for n in model.nodes if n.op in ("Conv", "Gemm")]
    bits = {n.name: model.quant[n.inputs[1].name].spec.bits for n in layers}
    assert bits[layers[0].name] == 8 and bits["/fc/Gemm"] == 8
    assert {b for name, b in bits.items() if name not in (layers[0].name, "/fc/Gemm")} == {4}
    assert model.quant["input"].spec.bits == 8
    assert model.quant[layers[-1].inputs[0].name].spec.bits == 8  # the last layer's input, tied back to the Relu
    assert model.quant["logits"].spec.bits == 8
    inner = next(n for n in layers[1:-1])
    assert model.quant[inner.inputs[0].name].spec.bits == 4


def test_concat_inputs_and_output_share_one_scale():
    rng = np.random.default_rng(0)
    inits = {"w1": rng.normal(size=(4, 3, 1, 1)).astype(np.float32), "w2": 3 * rng.normal(size=(5, 3, 1, 1)).astype(np.float32),
             "w3": rng.normal(size=(2, 9, 1, 1)).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], name="c1"), helper.make_node("Conv", ["x", "w2"], ["b"], name="c2"),
             helper.make_node("Concat", ["a", "b"], ["cat"], axis=1), helper.make_node("Conv", ["cat", "w3"], ["y"], name="c3")]
    model = make_model(nodes, [("x", [1, 3, 4, 4])], [("y", None)], inits)
    result = quantize(model, {"x": rng.normal(size=(32, 3, 4, 4)).astype(np.float32)}, progress=False)
    params = [result.annotated.quant[n].params for n in ("a", "b", "cat")]
    assert len({float(p.scale) for p in params}) == 1 and len({int(p.zero_point) for p in params}) == 1


def _gated(gate_of_other_tensor: bool):
    """conv -> relu -> (x * hardsigmoid(conv(mean(x)))) or Swish's (x * sigmoid(x)) -> conv."""
    rng = np.random.default_rng(2)
    inits = {"w1": rng.normal(size=(4, 3, 1, 1)).astype(np.float32), "w2": rng.normal(size=(4, 4, 1, 1)).astype(np.float32),
             "w3": rng.normal(size=(2, 4, 1, 1)).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], name="c1"), helper.make_node("Relu", ["a"], ["f"])]
    if gate_of_other_tensor:
        nodes += [helper.make_node("GlobalAveragePool", ["f"], ["g"]), helper.make_node("Conv", ["g", "w2"], ["e"], name="c2"),
                  helper.make_node("HardSigmoid", ["e"], ["gate"])]
    else:
        nodes += [helper.make_node("Sigmoid", ["f"], ["gate"])]
    nodes += [helper.make_node("Mul", ["f", "gate"], ["m"], name="mul"), helper.make_node("Conv", ["m", "w3"], ["y"], name="c3")]
    model = make_model(nodes, [("x", [1, 3, 4, 4])], [("y", None)], inits)
    return AnnotateQuant(load_config(None, "w8a8", None, []))(model).model


def test_a_gate_times_other_features_is_a_quantized_product():
    model = _gated(True)
    assert {"f", "gate", "m"} <= set(model.quant), "both factors and the product: a table and an integer multiply"


def test_a_product_of_one_tensor_with_itself_stays_one_function():
    model = _gated(False)
    assert "gate" not in model.quant, "x * sigmoid(x) is one lookup table from x to the product"
    assert {"f", "m"} <= set(model.quant)


def test_unsupported_ops_stay_float_between_dequantized_tensors():
    rng = np.random.default_rng(1)
    inits = {"w1": rng.normal(size=(4, 3)).astype(np.float32), "w2": rng.normal(size=(2, 4)).astype(np.float32)}
    nodes = [helper.make_node("Gemm", ["x", "w1"], ["h"], transB=1, name="fc1"), helper.make_node("Sigmoid", ["h"], ["s"]),
             helper.make_node("Gemm", ["s", "w2"], ["y"], transB=1, name="fc2")]
    model = make_model(nodes, [("x", [8, 3])], [("y", None)], inits)
    result = quantize(model, {"x": rng.normal(size=(32, 3)).astype(np.float32)}, progress=False)
    sigmoid = next(n for n in result.qdq.nodes if n.op == "Sigmoid")
    assert result.qdq.producer(sigmoid.inputs[0]).op == "DequantizeLinear"
    assert [n.op for n in result.qdq.consumers(sigmoid.outputs[0])] == ["QuantizeLinear"]


def test_skipped_layer_has_no_weight_quantizer():
    model = FoldBatchNorm()(Canonicalize()(ir.load(ROOT / "models" / "fashion_resnet8.onnx")).model).model
    annotated = AnnotateQuant(load_config(None, "w8a8", None, ["/fc/*:skip"]))(model).model
    assert "fc.weight" not in annotated.quant


def test_explicit_weight_observer_override_is_kept():
    config = load_config(None, "w4a8", None, ["/fc/*:wobserver=lp", "/layer1/*:wbits=8"])
    assert config.weight_spec("/fc/Gemm", 0, edge=True).observer == "lp"
    assert config.weight_spec("/layer1/conv1/Conv", 0, edge=False).observer == "minmax"
    assert config.weight_spec("/layer2/conv1/Conv", 0, edge=False).observer == "lp"


def test_a_3d_matmuls_bias_add_is_inside_the_layer():
    """A linear layer on a sequence exports as MatMul + Add (no Gemm takes 3-D inputs): quantize
    after the bias, as after a Conv's, so that the integer layer adds it in int32."""
    rng = np.random.default_rng(4)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["a"]),
             helper.make_node("Relu", ["a"], ["r"]), helper.make_node("MatMul", ["r", "w2"], ["y"])]
    model = make_model(nodes, [("x", [2, 5, 4])], [("y", None)],
                       {"w": rng.normal(size=(4, 6)).astype(np.float32), "b": rng.normal(size=6).astype(np.float32),
                        "w2": rng.normal(size=(6, 3)).astype(np.float32)})
    annotated = AnnotateQuant(load_config(None, "w8a8", None, []))(model).model
    assert "r" in annotated.quant and not {"m", "a"} & set(annotated.quant), sorted(annotated.quant)


def test_a_spatial_reduce_mean_is_quantized_on_both_sides():
    """dynamo exports write adaptive_avg_pool2d(x, 1) as ReduceMean(x, axes=[-1, -2]): its input
    is quantized (the activation before it becomes a table) and its output, each with its own
    scale; a mean over channels (a decomposed LayerNorm's) gets nothing of its own."""
    rng = np.random.default_rng(5)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"), helper.make_node("Sigmoid", ["c"], ["s"]),
             helper.make_node("Mul", ["c", "s"], ["silu"]),
             helper.make_node("ReduceMean", ["silu", "hw"], ["g"], keepdims=1),
             helper.make_node("ReduceMean", ["silu", "ch"], ["m"], keepdims=1),
             helper.make_node("Add", ["g", "m"], ["a"]), helper.make_node("Conv", ["a", "w2"], ["y"], name="conv2")]
    model = make_model(nodes, [("x", [1, 3, 4, 4])], [("y", None)],
                       {"w": rng.normal(size=(4, 3, 1, 1)).astype(np.float32), "hw": np.array([-1, -2], np.int64),
                        "ch": np.array([1], np.int64), "w2": rng.normal(size=(2, 4, 1, 1)).astype(np.float32)},
                       opset=18)
    annotated = AnnotateQuant(load_config(None, "w8a8", None, []))(model).model
    assert {"silu", "g"} <= set(annotated.quant) and annotated.quant["g"].group != annotated.quant["silu"].group
    other = AnnotateQuant(load_config(None, "w8a8", None, []))(model.copy()).model   # "m" only via the Add
    assert other.quant["m"].group != other.quant["silu"].group
