"""correct-bias: after it, each layer's mean output with rounded weights equals the float layer's."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from onnx import helper

from graphs import ROOT, cli, make_model
from qcompiler import ir
from qcompiler.blocks import ReconstructConfig
from qcompiler.driver import quantize
from qcompiler.executor import session
from qcompiler.quant.maths import quantize as quantize_values
from qcompiler.quant.presets import load_config

SUBSET = ROOT / "models" / "fashion_mnist_subset.npz"


def conv_net(with_bias: bool, opset: int = 17):
    """conv 3x3 -> depthwise 3x3 -> flatten -> Gemm, no padding."""
    rng = np.random.default_rng(0)
    inits = {"w1": rng.normal(size=(6, 3, 3, 3)).astype(np.float32), "w2": rng.normal(size=(6, 1, 3, 3)).astype(np.float32),
             "w3": rng.normal(size=(24, 5)).astype(np.float32), "b2": rng.normal(size=6).astype(np.float32),
             "b3": rng.normal(size=5).astype(np.float32)}
    if with_bias:
        inits["b1"] = rng.normal(size=6).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w1"] + (["b1"] if with_bias else []), ["c1"], kernel_shape=[3, 3], name="conv"),
             helper.make_node("Conv", ["c1", "w2", "b2"], ["c2"], kernel_shape=[3, 3], group=6, name="dw"),
             helper.make_node("Flatten", ["c2"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "w3", "b3"], ["y"], name="fc")]
    return make_model(nodes, [("x", ["N", 3, 6, 6])], [("y", None)], inits, opset=opset)


def relu_net():
    """conv 3x3 (padded) -> Relu -> depthwise 3x3 (padded) -> Relu -> flatten -> Gemm."""
    rng = np.random.default_rng(0)
    inits = {"w1": rng.normal(size=(6, 3, 3, 3)).astype(np.float32), "b1": rng.normal(size=6).astype(np.float32),
             "w2": rng.normal(size=(6, 1, 3, 3)).astype(np.float32), "b2": rng.normal(size=6).astype(np.float32),
             "w3": rng.normal(size=(216, 5)).astype(np.float32) / 8, "b3": rng.normal(size=5).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], kernel_shape=[3, 3], pads=[1] * 4, name="conv"),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], kernel_shape=[3, 3], pads=[1] * 4, group=6, name="dw"),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("Flatten", ["r2"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "w3", "b3"], ["y"], name="fc")]
    return make_model(nodes, [("x", ["N", 3, 6, 6])], [("y", None)], inits)


def layer_means(model: ir.Model, feeds: dict, names: list[str]) -> list[np.ndarray]:
    values = session(model, extra_outputs=names).run(names, feeds)
    return [v.mean(axis=(0, 2, 3)) if v.ndim == 4 else v.mean(axis=0) for v in values]


LEARNED = ReconstructConfig(iters=40, act_iters=0, samples=64, batch_size=16)  # a few AdaRound steps


@pytest.mark.parametrize("with_bias,opset,reconstruct", [(True, 17, None), (False, 18, None),  # ReduceMean axes:
                                                         (True, 17, LEARNED)])  # attribute, input; after BRECQ
def test_each_layer_mean_output_equals_the_float_layer(with_bias, opset, reconstruct):
    """Weight-only 4-bit (activations float), so a layer's input is the float one and the output
    mean shift is exactly (W_q - W) E[x]: the corrected QDQ layer has the float layer's mean.
    After reconstruction W_q is the learned integers, which the correction must read."""
    # constant over space, so every window's mean is the image's mean (the pass's assumption)
    x = np.broadcast_to(np.random.default_rng(1).normal(1.0, 1.0, size=(64, 3, 1, 1)), (64, 3, 6, 6)).astype(np.float32)
    model = conv_net(with_bias, opset)
    config = load_config(None, "w4", None, ["*:wbits=4"])
    fixed = quantize(model.copy(), {"x": x}, config, progress=False, reconstruct=reconstruct)
    plain = quantize(model.copy(), {"x": x}, load_config(None, "w4", None, ["*:wbits=4"], bias_correction=False),
                     progress=False, reconstruct=reconstruct)
    assert sorted(fixed.bias_shifts) == ["conv", "dw", "fc"] and plain.bias_shifts == {}
    if reconstruct is not None:  # kept because it raised the output's SQNR on the data
        assert fixed.bias_check[1] > fixed.bias_check[0]
        assert "after reconstruction" in fixed.report().bias_correction
        assert sum(_learned_not_nearest(fixed.annotated, w) for w in ("w1", "w2", "w3")) > 0
    for layer, output in (("conv", "c1"), ("dw", "c2"), ("fc", "y")):
        # each layer fed the float input of the float model, so only its own rounding differs
        float_mean, = layer_means(fixed.float_model, {"x": x}, [output])
        inputs = {"conv": "x", "dw": "c1", "fc": "f"}[layer]
        single = _single_layer(fixed.qdq, layer)
        feed = {"x": x} if inputs == "x" else {inputs: session(fixed.float_model, extra_outputs=[inputs]).run([inputs], {"x": x})[0]}
        got, = layer_means(single, feed, [single.graph.outputs[0].name])
        plain_got, = layer_means(_single_layer(plain.qdq, layer), feed, [output])
        scale = np.abs(float_mean).max()
        assert np.max(np.abs(got - float_mean)) <= 2e-5 * scale + 1e-5  # int32 bias rounding: < 1e-6 here
        assert np.max(np.abs(plain_got - float_mean)) > 20 * np.max(np.abs(got - float_mean))


def _single_layer(qdq: ir.Model, layer: str) -> ir.Model:
    """The QDQ model cut to one layer (its weight/bias DequantizeLinear nodes and the layer itself)."""
    import onnx.utils

    node = next(n for n in qdq.graph.nodes if n.name == layer)
    proto = qdq.to_onnx()
    data = node.inputs[0].name
    extracted = onnx.utils.Extractor(proto).extract_model([data], [node.outputs[0].name])
    return ir.Model.from_onnx(extracted)


def test_conv_without_bias_gets_one_and_layers_without_quantized_weights_are_left():
    x = np.random.default_rng(1).normal(size=(16, 3, 6, 6)).astype(np.float32)
    config = load_config(None, "w4", None, ["*:wbits=4", "fc:skip"])
    result = quantize(conv_net(False), {"x": x}, config, progress=False)
    conv = next(n for n in result.annotated.graph.nodes if n.name == "conv")
    assert result.annotated.const_value(result.annotated.input_or_none(conv, 2)).shape == (6,)
    assert sorted(result.bias_shifts) == ["conv", "dw"]
    fc = next(n for n in result.annotated.graph.nodes if n.name == "fc")
    np.testing.assert_array_equal(result.annotated.const_value(fc.inputs[2]), result.float_model.const_value(
        next(n for n in result.float_model.graph.nodes if n.name == "fc").inputs[2]))


def test_after_reconstruction_a_correction_that_lowers_the_output_sqnr_is_not_kept(monkeypatch):
    """The judge is the output's SQNR on the calibration data: made to prefer the uncorrected
    model, the pass leaves every bias as reconstruction left it and the summary says why."""
    import qcompiler.evaluation

    real = qcompiler.evaluation.evaluate
    calls = []

    def inverted(float_model, quant_model, data, **kw):  # the corrected candidate comes second: score it lower
        calls.append(real(float_model, quant_model, data, **kw))
        return dataclasses.replace(calls[-1], sqnr_db=-len(calls))

    monkeypatch.setattr(qcompiler.evaluation, "evaluate", inverted)
    x = np.random.default_rng(1).normal(0.5, 1.0, size=(32, 3, 6, 6)).astype(np.float32)
    short = ReconstructConfig(iters=10, act_iters=0, samples=32, batch_size=16)
    run = quantize(relu_net(), {"x": x}, load_config(None, "w4a4", None, []), progress=False, reconstruct=short)
    assert len(calls) == 2 and run.bias_shifts == {} and run.bias_check == (-1, -2)
    assert run.report().bias_correction.startswith("not kept after reconstruction: output SQNR")
    for name in ("b1", "b2", "b3"):
        np.testing.assert_array_equal(run.annotated.const_value(run.annotated.tensor(name)),
                                      run.float_model.const_value(run.float_model.tensor(name)))


def test_off_after_reconstruction_too_and_from_config_file(tmp_path):
    x = np.random.default_rng(1).normal(size=(16, 3, 6, 6)).astype(np.float32)
    short = ReconstructConfig(iters=4, act_iters=1, samples=16)
    config = load_config(None, "w4a8", None, [], bias_correction=False)
    reconstructed = quantize(conv_net(True), {"x": x}, config, progress=False, reconstruct=short)
    assert reconstructed.reconstruction and reconstructed.bias_shifts == {}
    assert reconstructed.report().bias_correction == "off"
    for name in ("b1", "b2", "b3"):  # the trained biases, untouched
        np.testing.assert_array_equal(reconstructed.annotated.const_value(reconstructed.annotated.tensor(name)),
                                      reconstructed.float_model.const_value(reconstructed.float_model.tensor(name)))
    config_file = tmp_path / "q.json"
    config_file.write_text('{"preset": "w4a8", "bias_correction": false}')
    assert load_config(config_file, None, None, []).bias_correction is False
    assert load_config(config_file, None, None, [], bias_correction=True).bias_correction is True
    config_file.write_text('{"bias_correction": "yes"}')
    with pytest.raises(Exception, match="bias_correction must be true or false"):
        load_config(config_file, None, None, [])


def test_lowers_kl_at_w4a8_on_the_fashion_subset():
    """The measured effect (benchmarks/results/ptq.md), on the bundled 300 images: MobileNetV2-style
    net at W4A8, KL(float || quantized) at least halved."""
    from qcompiler.data import load_data
    from qcompiler.evaluation import evaluate

    data = dict(np.load(SUBSET))
    model = ir.load(ROOT / "models" / "fashion_mobilenetv2.onnx")
    kls = []
    for enabled in (False, True):
        result = quantize(model.copy(), {"input": data["input"]}, load_config(None, "w4a8", None, [], bias_correction=enabled),
                          progress=False)
        kls.append(evaluate(result.float_model, result.qdq, load_data(data, result.float_model, what="evaluation"),
                            progress=False).kl)
    assert kls[1] < kls[0] / 2, kls


def test_cli_reports_it_and_turns_it_off(tmp_path, capsys):
    model = ROOT / "models" / "fashion_resnet8.onnx"
    code, out, _ = cli(capsys, "quantize", str(model), "--calib", str(SUBSET), "--calib-count", "32", "-o", str(tmp_path / "a"),
                       "--no-progress")
    assert code == 0 and _row(out, "bias correction").startswith("10 layers")
    code, out, _ = cli(capsys, "quantize", str(model), "--calib", str(SUBSET), "--calib-count", "32", "-o", str(tmp_path / "b"),
                       "--no-progress", "--no-bias-correction")
    assert code == 0 and _row(out, "bias correction") == "off"


def _learned_not_nearest(annotated: ir.Model, weight: str) -> int:
    """How many of a weight's learned integers differ from rounding to nearest."""
    tq = annotated.quant[weight]
    return int(np.sum(tq.rounded != quantize_values(annotated.const_value(annotated.tensor(weight)), tq.params, tq.spec)))


def _row(summary: str, key: str) -> str:
    return next(line[len(key):].strip() for line in summary.splitlines() if line.startswith(key))
