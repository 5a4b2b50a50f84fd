"""reconstruct-blocks: a short reconstruction lowers the block output error, the learned integers
reach the QDQ model, runs repeat with a seed, and the options (Fisher, QDrop, granularities) run."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from onnx import numpy_helper

import qcompiler
from qcompiler.blocks import ReconstructConfig
from qcompiler.errors import PassError
from qcompiler.executor import session
from qcompiler.passes import ReconstructBlocks
from qcompiler.quant.maths import quantize
from graphs import ROOT

DATA = np.load(ROOT / "models" / "fashion_mnist_subset.npz")
SHORT = ReconstructConfig(iters=60, act_iters=15, samples=96)


def _quantized(preset="w4a4", config=SHORT):
    model = qcompiler.load(ROOT / "models" / "fashion_resnet8.onnx")
    return qcompiler.quantize(model, {"input": DATA["input"][:96]}, preset, progress=False, reconstruct=config)


@pytest.fixture(scope="module")
def reconstructed():
    return _quantized()


def test_short_reconstruction_lowers_the_block_output_error(reconstructed):
    reports = reconstructed.reconstruction
    assert len(reports) == 5
    low_bit = [r for r in reports if any(reconstructed.annotated.quant[w].spec.bits == 4
                                         for w in reconstructed.annotated.quant
                                         if reconstructed.annotated.quant[w].layer in r.block.layers)]
    assert len(low_bit) == 3  # the three residual blocks; the stem and the classifier stay 8-bit
    for report in low_bit:
        assert report.loss_learned < report.loss_nearest, report
    assert sum(r.loss_learned for r in reports) < sum(r.loss_nearest for r in reports)


def test_the_qdq_model_holds_the_learned_integers(reconstructed):
    annotated, qdq = reconstructed.annotated, reconstructed.qdq.to_onnx()
    stored = {i.name: numpy_helper.to_array(i) for i in qdq.graph.initializer}
    changed = 0
    for name, tq in annotated.quant.items():
        if tq.role != "weight":
            continue
        assert tq.rounded is not None, name
        np.testing.assert_array_equal(stored[f"{name}_quantized"].astype(np.int32), tq.rounded)
        nearest = quantize(annotated.const_value(annotated.tensor(name)), tq.params, tq.spec)
        assert np.all(np.abs(tq.rounded - nearest) <= 1), name  # AdaRound only chooses floor or ceil
        changed += int(np.sum(tq.rounded != nearest))
    assert changed > 0
    assert session(qdq).run(None, {"input": DATA["input"][:4]})[0].shape == (4, 10)


def test_runs_repeat_with_a_seed_and_differ_with_another():
    first = _quantized("w2a4", dataclasses.replace(SHORT, iters=30, act_iters=0))
    again = _quantized("w2a4", dataclasses.replace(SHORT, iters=30, act_iters=0))
    other = _quantized("w2a4", dataclasses.replace(SHORT, iters=30, act_iters=0, seed=1))
    weights = [n for n, tq in first.annotated.quant.items() if tq.role == "weight"]
    assert all(np.array_equal(first.annotated.quant[w].rounded, again.annotated.quant[w].rounded) for w in weights)
    assert not all(np.array_equal(first.annotated.quant[w].rounded, other.annotated.quant[w].rounded)
                   for w in weights)


@pytest.mark.parametrize("options", [dict(fisher=True), dict(qdrop=0.5), dict(granularity="layer"),
                                     dict(granularity="net", act_iters=0)], ids=str)
def test_options_run_and_lower_the_error(options):
    result = _quantized("w4a4", dataclasses.replace(SHORT, **options))
    reports = result.reconstruction
    assert sum(r.loss_learned for r in reports) < sum(r.loss_nearest for r in reports)
    if options.get("fisher"):  # weights |g| + 1 > 1: on the first block (same inputs) the error grows
        plain = _quantized("w4a4", dataclasses.replace(SHORT, iters=0, act_iters=0)).reconstruction
        assert reports[0].loss_nearest > plain[0].loss_nearest


def test_weight_only_preset_learns_rounding_only():
    result = _quantized("w4", dataclasses.replace(SHORT, iters=40))
    quant = result.annotated.quant
    assert quant and all(tq.role == "weight" for tq in quant.values())
    assert sum(r.loss_learned for r in result.reconstruction) < sum(r.loss_nearest for r in result.reconstruction)


def test_needs_calibration_data():
    model = qcompiler.load(ROOT / "models" / "fashion_resnet8.onnx")
    annotated = qcompiler.quantize(model, {"input": DATA["input"][:16]}, "w4a4", progress=False).annotated
    with pytest.raises(PassError, match="needs calibration data"):
        ReconstructBlocks()(annotated)


def _biases(model) -> dict[str, np.ndarray]:
    """Each quantized layer's bias as the model computes with it (a QDQ model's dequantized int32)."""
    onnx_model = model.to_onnx()
    stored = {i.name: numpy_helper.to_array(i) for i in onnx_model.graph.initializer}
    out = {}
    for node in onnx_model.graph.node:
        if node.op_type in ("Conv", "Gemm") and len(node.input) > 2:
            bias = node.input[2]
            dq = next((n for n in onnx_model.graph.node if bias in n.output and n.op_type == "DequantizeLinear"), None)
            out[node.name] = (stored[bias] if dq is None else
                              stored[dq.input[0]].astype(np.float64) * stored[dq.input[1]]).astype(np.float64)
    return out


def test_learned_biases_reach_the_qdq_model_and_replace_bias_correction():
    plain = _quantized("w2a4", dataclasses.replace(SHORT, iters=40, act_iters=10))
    learned = _quantized("w2a4", dataclasses.replace(SHORT, iters=40, act_iters=10, bias_lr=1e-3))
    assert learned.bias_shifts == {} and learned.bias_check is None  # correct-bias did not run after it
    assert plain.bias_check is not None                             # it did (guarded) without learned biases
    before, after = _biases(learned.float_model), _biases(learned.qdq)
    assert before.keys() == after.keys() and len(after) == 10
    moved = [name for name in after if np.abs(after[name] - before[name]).max() > 1e-3]
    assert len(moved) >= 8, moved   # most layers' biases moved (the rest within int32 rounding)
    assert sum(r.loss_learned for r in learned.reconstruction) < sum(r.loss_learned for r in plain.reconstruction)


def test_held_out_guard_drops_what_raises_the_held_out_error():
    """The last quarter of the calibration data is noise, unlike the images the blocks train on: no
    block raises the network's output error on it, each block starts where the last one left it,
    and where the guard drops a block's learned rounding the QDQ model holds its nearest integers."""
    images = DATA["input"][:72]
    noise = np.random.default_rng(0).normal(0.0, 1.0, (24, *images.shape[1:])).astype(np.float32)
    model = qcompiler.load(ROOT / "models" / "fashion_resnet8.onnx")
    result = qcompiler.quantize(model, {"input": np.concatenate([images, noise])}, "w2a4", progress=False,
                                reconstruct=dataclasses.replace(SHORT, holdout=0.25))
    reports = result.reconstruction
    assert all(r.held_learned <= r.held_nearest for r in reports), reports
    for previous, report in zip(reports, reports[1:]):
        assert report.held_nearest == pytest.approx(previous.held_learned, rel=1e-4)
    dropped = [r for r in reports if "rounding" in r.dropped]
    assert dropped and len(dropped) < len(reports), [r.dropped for r in reports]
    annotated = result.annotated
    for report in dropped:
        for name, tq in annotated.quant.items():
            if tq.role == "weight" and tq.layer in report.block.layers:
                nearest = quantize(annotated.const_value(annotated.tensor(name)), tq.params, tq.spec)
                assert tq.rounded is None or np.array_equal(tq.rounded, nearest), name
    assert any(r.held_learned < r.held_nearest for r in reports)   # and keeps what generalises


def test_without_holdout_reports_carry_no_held_out_error(reconstructed):
    assert all(r.held_nearest is None and r.held_learned is None and r.dropped == () for r in reconstructed.reconstruction)


@pytest.mark.parametrize("share", [-0.1, 0.6, 1.0])
def test_holdout_outside_its_range_is_refused(share):
    with pytest.raises(ValueError, match="holdout must be a share from 0 to 0.5"):
        ReconstructConfig(holdout=share)


def test_an_unknown_holdout_metric_is_refused():
    with pytest.raises(ValueError, match="holdout_metric must be one of mse, kl, not 'l1'"):
        ReconstructConfig(holdout=0.25, holdout_metric="l1")
