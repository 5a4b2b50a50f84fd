"""`qcompiler quantize/compile --reconstruct brecq` and `inspect --blocks` as a user meets them."""

from __future__ import annotations

import re

import pytest

from graphs import ROOT, cli

RESNET = ROOT / "models" / "fashion_resnet8.onnx"
SUBSET = ROOT / "models" / "fashion_mnist_subset.npz"


def test_quantize_with_brecq_reports_the_reconstruction(tmp_path, capsys):
    code, out, err = cli(capsys, "quantize", RESNET, "--calib", SUBSET, "--preset", "w4a4", "--reconstruct", "brecq",
                         "--iters", "30", "--act-iters", "8", "--calib-count", "64", "-o", tmp_path, "--fisher")
    assert code == 0, err
    line = next(line for line in out.splitlines() if line.startswith("reconstruction"))
    match = re.search(r"BRECQ block, 30\+8 iterations per block, Fisher \(estimated ([\d.]+) s, no crops\): 5 blocks, "
                      r"block output error ([\d.]+) -> ([\d.]+) .*, ([\d.]+) s$", line)
    assert match and float(match[3]) < float(match[2]), line
    assert 0 < float(match[1]) and 0 < float(match[4]), line
    estimate = next(i for i, text in enumerate(err.splitlines()) if text.startswith("reconstruction estimate: "))
    assert estimate < next(i for i, text in enumerate(err.splitlines()) if text.startswith("block0 (1/5)"))
    assert "block4 (5/5) rounding" in err and "loss" in err  # progress per block, with the loss
    report = (tmp_path / "report.html").read_text()
    assert "<h2>Block reconstruction</h2>" in report and "/layer3/conv2/Conv" in report
    assert (tmp_path / "model.qdq.onnx").exists()


def test_crop_reaches_the_reconstruction(tmp_path, capsys):
    code, out, err = cli(capsys, "quantize", RESNET, "--calib", SUBSET, "--preset", "w4a4", "--reconstruct", "brecq",
                         "--iters", "20", "--act-iters", "5", "--calib-count", "64", "--crop", "6", "--no-progress",
                         "-o", tmp_path)
    assert code == 0, err
    line = next(line for line in out.splitlines() if line.startswith("reconstruction"))
    match = re.search(r"\(estimated [\d.]+ s, with crops on 3 blocks, [\d.]+ s without\): 5 blocks, block output "
                      r"error ([\d.]+) -> ([\d.]+)", line)
    assert match and float(match[2]) < float(match[1]), line


def test_learn_bias_reaches_the_reconstruction_and_the_summary(tmp_path, capsys):
    code, out, err = cli(capsys, "quantize", RESNET, "--calib", SUBSET, "--preset", "w2a4", "--reconstruct", "brecq",
                         "--iters", "20", "--act-iters", "5", "--calib-count", "64", "--learn-bias", "--no-progress",
                         "-o", tmp_path)
    assert code == 0, err
    assert "BRECQ block, 20+5 iterations per block, biases learned" in out
    line = next(line for line in out.splitlines() if line.startswith("bias correction"))
    assert "not run: reconstruction learned the biases (--learn-bias)" in line, line


def test_holdout_guards_the_reconstruction_and_reaches_the_summary(tmp_path, capsys):
    code, out, err = cli(capsys, "quantize", RESNET, "--calib", SUBSET, "--preset", "w2a4", "--reconstruct", "brecq",
                         "--iters", "20", "--act-iters", "5", "--calib-count", "64", "--holdout", "0.25",
                         "--no-progress", "-o", tmp_path)
    assert code == 0, err
    assert "BRECQ block, 20+5 iterations per block, 25% of the samples held out as a guard" in out
    line = next(line for line in out.splitlines() if line.startswith("held-out guard"))
    match = re.search(r"network output error on the held-out samples ([\d.]+) -> ([\d.]+) \(before the first block, "
                      r"after the last\); \d+ learned phases? dropped", line)
    assert match and float(match[2]) <= float(match[1]), line
    assert "<th>held-out: after</th>" in (tmp_path / "report.html").read_text()


def test_holdout_kl_guards_by_the_softmax_divergence(tmp_path, capsys):
    """--holdout-metric kl: the guard measures the KL divergence of the logits' softmax (a
    classifier's top-1 depends on it, not on the logits' scale), never raised by a kept phase."""
    code, out, err = cli(capsys, "quantize", RESNET, "--calib", SUBSET, "--preset", "w2a4", "--reconstruct", "brecq",
                         "--iters", "20", "--act-iters", "5", "--calib-count", "64", "--holdout", "0.25",
                         "--holdout-metric", "kl", "--no-progress", "-o", tmp_path)
    assert code == 0, err
    assert "25% of the samples held out as a guard (KL)" in out
    line = next(line for line in out.splitlines() if line.startswith("held-out guard"))
    match = re.search(r"held-out samples ([\d.e-]+) -> ([\d.e-]+) \(before", line)
    assert match and 0 < float(match[2]) <= float(match[1]) < 10, line   # nats: a squared logit error is far larger


@pytest.mark.parametrize("args,message", [(["--holdout-metric", "kl"], "--holdout-metric needs --holdout SHARE"),
                                          (["--holdout-metric", "l1", "--holdout", "0.25"], "invalid choice")])
def test_holdout_metric_needs_the_guard_and_a_known_name(args, message, tmp_path, capsys):
    code, _, err = cli(capsys, "quantize", RESNET, "--calib", SUBSET, "--reconstruct", "brecq", *args, "-o", tmp_path)
    assert code == 2 and message in err, err


def test_holdout_that_leaves_no_sample_out_is_a_clear_error(tmp_path, capsys):
    code, out, err = cli(capsys, "quantize", RESNET, "--calib", SUBSET, "--preset", "w4a4", "--reconstruct", "brecq",
                         "--iters", "5", "--calib-count", "4", "--holdout", "0.1", "--no-progress", "-o", tmp_path / "out")
    assert code != 0 and "holding out 10% of 4 calibration samples leaves 0" in err, err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_compile_with_brecq_builds_and_checks_the_library(tmp_path, capsys):
    code, out, err = cli(capsys, "compile", RESNET, "--calib", SUBSET, "--preset", "w2a4", "--reconstruct", "brecq",
                         "--iters", "20", "--calib-count", "64", "--no-progress", "-o", tmp_path)
    assert code == 0, err
    assert "library vs QDQ model (onnxruntime): logits: max" in out
    from qcompiler.backends.tvm.targets import host_dot_kernels

    if host_dot_kernels():   # 2-bit weights four to a byte in the VNNI and AVX2 kernels
        assert "int2" in out
    assert (tmp_path / "model.so").exists()


@pytest.mark.parametrize("args,message", [
    (["--fisher"], "--fisher needs --reconstruct brecq"),
    (["--reconstruct", "brecq", "--qdrop", "1.5"], "argument --qdrop: 1.5: a probability in [0, 1)"),
    (["--reconstruct", "brecq", "--iters", "-1"], "argument --iters: -1: must be 0 or more"),
    (["--reconstruct", "brecq", "--granularity", "blocks"], "invalid choice: 'blocks'"),
    (["--reconstruct", "brecq", "--crop", "0"], "argument --crop: 0: must be positive (or auto, off)"),
    (["--reconstruct", "brecq", "--crop", "big"], "argument --crop: 'big': expected auto, off or a positive whole"),
    (["--crop", "32"], "--crop needs --reconstruct brecq"),
    (["--learn-bias"], "--learn-bias needs --reconstruct brecq"),
    (["--holdout", "0.2"], "--holdout needs --reconstruct brecq"),
    (["--reconstruct", "brecq", "--holdout", "0.7"], "argument --holdout: 0.7: a share above 0 and at most 0.5"),
])
def test_bad_options_are_usage_errors(args, message, tmp_path, capsys):
    code, out, err = cli(capsys, "quantize", RESNET, "--calib", SUBSET, "-o", tmp_path / "out", *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_inspect_lists_the_blocks(capsys):
    code, out, _ = cli(capsys, "inspect", RESNET, "--blocks", "--granularity", "stage")
    assert code == 0
    assert "blocks (stage granularity, after canonicalize + fold-batchnorm + fold-scale): 4" in out
    assert "block3: 1 layer(s) [/fc/Gemm] /Flatten_output_0 -> logits" in out
