"""train-quant (QIL, QAT): a short training lowers the task loss, with labels and by
distillation; the exported QDQ model computes what the simulation trained (each layer within 1
LSB when fed the same inputs); a seed repeats the integers; bad labels are refused before training."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper, numpy_helper

import qcompiler
import qcompiler.quant.annotation
import qcompiler.report_training
from qcompiler.errors import CalibrationDataError
from qcompiler.executor import session
from qcompiler.sim import Interpreter
from qcompiler.training import QATConfig, QILConfig
from graphs import ROOT, make_model

DATA = np.load(ROOT / "models" / "fashion_mnist_subset.npz")
CALIB = {"input": DATA["input"][:64]}
LABELLED = {"input": DATA["input"][:192], "labels": DATA["labels"][:192]}


def small_classifier() -> qcompiler.ir.Model:
    """Conv-Relu, Conv-Relu (stride 2), GlobalAveragePool, Flatten, Gemm to 10 classes; random
    weights, so that a few steps train it (and it jit-compiles in seconds, not ResNet8's 15)."""
    rng = np.random.default_rng(0)
    inits = {"w1": rng.normal(0, 0.5, (8, 1, 3, 3)), "b1": rng.normal(0, 0.1, 8),
             "w2": rng.normal(0, 0.2, (16, 8, 3, 3)), "b2": rng.normal(0, 0.1, 16),
             "fc": rng.normal(0, 0.3, (10, 16)), "fcb": np.zeros(10)}
    nodes = [helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("GlobalAveragePool", ["r2"], ["p"], name="pool"),
             helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "fc", "fcb"], ["logits"], name="fc", transB=1)]
    return make_model(nodes, [("input", ["N", 1, 28, 28])], [("logits", None)],
                      {k: v.astype(np.float32) for k, v in inits.items()})


def _trained(config, preset="w4a4", train=LABELLED, model=None):
    return qcompiler.quantize(model or small_classifier(), CALIB, preset, progress=False, train=config,
                              train_data=train)


@pytest.fixture(scope="module")
def qil_run():
    return _trained(QILConfig(epochs=2, batch_size=32, labels=True, interval_lr=3e-2))


def test_qil_lowers_the_task_loss_and_reports_its_intervals(qil_run):
    report = qil_run.training
    assert report.loss_after < report.loss_before, (report.loss_before, report.loss_after)
    assert len(report.weights) == 3 and {w.bits for w in report.weights} == {4, 8}  # edge layers 8-bit
    assert all(w.distance > 0 and 0 <= w.pruned < 1 for w in report.weights)
    html = qcompiler.report.write_html(qil_run.report())
    assert "Learned weight intervals" in html and "pruned" in html


def _share_at_most(share: float, values: np.ndarray, threshold: float, eps: float = 1e-5) -> bool:
    """Whether `share` is the share of `values` <= `threshold`, up to the values within `eps` of it
    (the simulator and onnxruntime sum in different orders: on this model 0.26% of the second
    Conv's outputs, the constant background, land within 1e-6 of its shifted threshold 0)."""
    return np.mean(values <= threshold - eps) - 1e-9 <= share <= np.mean(values <= threshold + eps) + 1e-9


def test_qil_reports_what_share_of_each_activation_it_prunes_and_clips(qil_run):
    """The shares of each QIL activation's float values that are zeros already, pruned
    (0 < y <= c - d) and clipped (y > c + d), against a count on the exported QDQ model in
    onnxruntime on the same (all 192) training samples: there the shift c - d is in the bias, so
    the Conv's output is z - (c - d) and the quantizer's input relu(z - (c - d))."""
    acts = {a.name: a for a in qil_run.training.activations}
    assert all(0 <= a.zeros + a.pruned <= 1 and 0 <= a.clipped <= 1 for a in acts.values())
    shifted = [a for a in acts.values() if a.low > 0]
    assert shifted and all(a.pruned > 0.01 for a in shifted), acts  # the learned threshold prunes something
    assert all(a.pruned == 0 for a in acts.values() if a.low == 0)
    a = acts["r2"]
    conv, relu = session(qil_run.qdq, optimize=False, extra_outputs=["c2", "r2"]).run(
        ["c2", "r2"], {"input": LABELLED["input"]})
    assert a.low > 0 and _share_at_most(a.zeros, conv, -a.low)
    assert _share_at_most(a.zeros + a.pruned, relu, 0.0), a
    assert _share_at_most(1 - a.clipped, relu, a.high - a.low), a
    row = qcompiler.report_training.interval_row(qil_run.training)[1]
    assert f"of their values beyond the zeros (most: {max(acts.values(), key=lambda a: a.pruned).name})" in row
    html = qcompiler.report.write_html(qil_run.report())
    assert "activation pruning ratio" in html and f"<td>{100 * a.pruned:.1f}%</td>" in html


def test_distillation_lowers_the_kl_to_the_float_model():
    run = _trained(QATConfig(epochs=2, batch_size=32), train={"input": DATA["input"][:192]})
    assert run.training.loss_after < run.training.loss_before
    assert "distillation" in run.training.setting


def _lsb_per_layer(annotated, hooks, params, qdq, dequantized, x):
    """Each quantized activation as `hooks` simulate it, fed the QDQ model's own values of the
    tensors before it, against the QDQ model: the largest difference in LSBs of its scale."""
    acts = [n for n, tq in annotated.quant.items() if tq.role == "activation"]
    names = [dequantized[a] for a in acts]
    reference = dict(zip(acts, session(qdq, optimize=False, extra_outputs=names).run(names, {"input": x})))
    sim, worst = Interpreter(annotated), {}
    for name in acts:
        if name in sim.graph_inputs:
            continue
        inputs = [n for n in reference if n != name and n not in sim.graph_inputs] + sim.graph_inputs
        fed = [n for n in inputs if any(n in s.inputs for s in sim.steps_between(inputs, [name]))]
        ours = sim.function(fed, [name], hooks)(params, {n: reference[n] if n != "input" else x for n in fed})[0]
        scale = float(np.max(qdq.quant_scale(name))) if hasattr(qdq, "quant_scale") else None
        worst[name] = np.abs(np.asarray(ours) - reference[name])
    return worst


@pytest.mark.parametrize("config,preset", [
    (QILConfig(epochs=1, batch_size=32, labels=True, interval_lr=3e-2), "w4a4"),
    (QILConfig(epochs=1, batch_size=32, labels=True, interval_lr=3e-2), "w2a2"),
    (QATConfig(epochs=1, batch_size=32, labels=True, ranges="ema"), "w4a4")],
    ids=["qil-w4a4", "qil-w2a2", "qat-ema-w4a4"])
def test_the_exported_model_is_what_was_trained(config, preset):
    """The trained hooks (QIL: codes at (c + d) / levels, steps 2d / levels, pruning shifts) on the
    model as training saw it, against the exported QDQ model: every layer within 1 LSB when fed
    the QDQ model's inputs to it. (ResNet8's whole QIL library against its QDQ model:
    tests/backends/test_trained_deploy.py.)"""
    from qcompiler import passes
    from qcompiler.data import load_data
    from qcompiler.driver import quantization_pipeline
    from qcompiler.quant.presets import load_config

    model = small_classifier()
    calib, train = load_data(CALIB, model), load_data(LABELLED, model)
    before = None
    for step in quantization_pipeline(load_config(None, preset, None, []), calib, train=config, train_data=train,
                                      progress=False):
        if isinstance(step, passes.TrainQuant):
            before = model.copy()
        dequantized = step.dequantized if isinstance(step, passes.InsertQDQ) else None
        model = step(model).model
        trainer = step if isinstance(step, passes.TrainQuant) else locals().get("trainer")
    quantizers, params = trainer.trained
    quantizers.model = before
    x = DATA["input"][256:300]
    errors = _lsb_per_layer(before, quantizers.hooks(), params, model, step.dequantized, x)
    for name, error in errors.items():
        group = before.quant[name].group or name
        lsb = error / float(np.max(np.asarray(quantizers.act_scale(params, group, None))))
        assert lsb.max() <= 1.0 + 1e-3, f"{name}: {lsb.max():.2f} LSB"
    if isinstance(config, QILConfig):
        assert quantizers.shifts  # the Conv -> Relu activations carry their pruning shift in the bias


def test_the_same_seed_gives_the_same_integers(qil_run):
    again = _trained(QILConfig(epochs=2, batch_size=32, labels=True, interval_lr=3e-2))
    ints = lambda run: {i.name: numpy_helper.to_array(i) for i in run.qdq.to_onnx().graph.initializer
                        if i.name.endswith("_quantized")}
    first, second = ints(qil_run), ints(again)
    assert first.keys() == second.keys() and all(np.array_equal(first[k], second[k]) for k in first)


def test_progressive_and_intervals_only_run_at_two_bits():
    run = _trained(QILConfig(epochs=1, batch_size=64, labels=True, intervals_only=True, progressive=(4, 2)), "w2a2")
    weights = {w.name: w for w in run.training.weights}
    assert {w.bits for w in weights.values()} == {2, 8}
    assert [label for label, _ in run.training.held_out] == []  # no held-out data given
    codes = [tq.rounded for tq in run.annotated.quant.values() if tq.role == "weight" and tq.spec.bits == 2]
    assert codes and all(set(np.unique(c)) <= {-1, 0, 1} for c in codes)  # ternary
    trained = qcompiler.quant.annotation.weight_values(run.annotated)
    original = {k: run.float_model.const_value(run.float_model.tensor(k)) for k in trained}
    assert all(np.array_equal(original[k], trained[k]) for k in trained)  # intervals only: weights kept


@pytest.mark.parametrize("labels,message", [(None, "needs a 'labels' array"), (np.full(256, 10), "0..9"),
                                            (np.full(256, 0.5), "one class index per sample")])
def test_bad_labels_are_refused_before_training(labels, message):
    data = {"input": DATA["input"][:192]} | ({} if labels is None else {"labels": labels[:192]})
    with pytest.raises(CalibrationDataError, match=message):
        _trained(QILConfig(labels=True), train=data)


def test_npy_training_data_streams_from_disk(tmp_path):
    """A .npy is memory-mapped, so training reads each batch's samples rather than the whole file."""
    from qcompiler.data import load_data

    path = tmp_path / "train.npy"
    np.save(path, DATA["input"][:64])
    data = load_data(path, small_classifier(), what="training")
    assert isinstance(data.arrays["input"], np.memmap)
    run = _trained(QILConfig(epochs=1, batch_size=32), train=str(path))
    assert run.training.samples == 64 and "distillation" in run.training.setting
