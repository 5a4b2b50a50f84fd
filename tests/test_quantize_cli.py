"""`qcompiler quantize` as a user meets it: outputs, accuracy, options, and bad data."""

from __future__ import annotations

import json
import pickle
import re

import numpy as np
import pytest
from PIL import Image

from graphs import ROOT
from qcompiler import ir
from qcompiler.cli import main
from qcompiler.data import load_data
from qcompiler.models.datasets import FASHION_MNIST_MEAN, FASHION_MNIST_STD
from qcompiler.executor import session

RESNET = ROOT / "models" / "fashion_resnet8.onnx"
MOBILENET = ROOT / "models" / "fashion_mobilenetv2.onnx"
SUBSET = ROOT / "models" / "fashion_mnist_subset.npz"


def cli(capsys, *args):
    code = main([str(a) for a in args] + ["--no-progress"] * (args[0] == "quantize"))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def summary(out: str) -> dict[str, str]:
    rows = [re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in out.splitlines() if not line.startswith("wrote")]
    return {row[0]: row[1] for row in rows if len(row) == 2}


@pytest.mark.parametrize("model", [RESNET, MOBILENET], ids=["resnet8", "mobilenetv2"])
def test_w8a8_accuracy_on_the_bundled_subset(model, tmp_path, capsys):
    """W8A8 (the default) keeps accuracy: calibrated on 150 bundled images, the drop on the other
    150 is at most 1.34 points (2 images), against the benchmark's full-test-set target of 0.3."""
    data = np.load(SUBSET)
    np.savez(tmp_path / "calib.npz", input=data["input"][:150])
    np.savez(tmp_path / "eval.npz", input=data["input"][150:], labels=data["labels"][150:])
    out_dir = tmp_path / "out"
    code, out, err = cli(capsys, "quantize", model, "--calib", tmp_path / "calib.npz", "--eval", tmp_path / "eval.npz",
                         "-o", out_dir)
    assert code == 0, err
    table = summary(out)
    float_top1, quant_top1 = (float(v) for v in table["top-1 float / quantized"].split("(")[0].split("/"))
    assert float_top1 - quant_top1 <= 2 / 150 + 1e-9
    assert float(table["top-1 agreement"]) >= 0.98
    assert sorted(p.name for p in out_dir.iterdir()) == ["model.qdq.onnx", "report.html"]
    report = (out_dir / "report.html").read_text()
    assert "Every quantized tensor" in report and report.count("data:image/png;base64,") == 4
    labels = data["labels"][150:]
    logits = session(ir.load(out_dir / "model.qdq.onnx"), optimize=False).run(None, {"input": data["input"][150:]})[0]
    assert f"{float((logits.argmax(1) == labels).mean()):.4f}" == f"{quant_top1:.4f}"


@pytest.mark.parametrize("observer", ["minmax", "ema", "percentile", "lp", "kl", "mse"])  # mse: lp's old name
def test_every_observer(observer, tmp_path, capsys, caplog):
    code, out, err = cli(capsys, "quantize", RESNET, "--calib", SUBSET, "--observer", observer, "--calib-count", 64,
                         "-o", tmp_path)
    assert code == 0, err
    assert summary(out)["activation observer"] == ("lp" if observer == "mse" else observer)
    if observer == "mse":
        assert "observer 'mse' is now called 'lp'" in caplog.text


@pytest.mark.parametrize("preset", ["w8a8-per-tensor", "w4a8", "w4a4", "w2a4"])
def test_every_preset_runs_in_onnxruntime(preset, tmp_path, capsys):
    code, out, err = cli(capsys, "quantize", RESNET, "--calib", SUBSET, "--preset", preset, "--calib-count", 64,
                         "--eval", SUBSET, "-o", tmp_path)
    assert code == 0, err
    assert summary(out)["preset"] == preset
    assert float(summary(out)["top-1 agreement"]) > 0.5


def test_overrides_from_cli_and_config(tmp_path, capsys):
    config = tmp_path / "q.json"
    config.write_text(json.dumps({"preset": "w4a8", "overrides": [{"pattern": "/layer1/*", "wbits": 8}]}))
    code, out, err = cli(capsys, "quantize", RESNET, "--calib", SUBSET, "--config", config, "--calib-count", 32,
                         "--override", "/layer2/conv1/Conv:skip", "-o", tmp_path / "out")
    assert code == 0, err
    report = (tmp_path / "out" / "report.html").read_text()
    assert "layer1.conv1.weight</td><td>weight</td><td>int8 sym" in report
    assert "layer3.conv1.weight</td><td>weight</td><td>int4 sym" in report
    assert "layer2.conv1.weight" not in report  # skipped: left in float


def test_image_folder_calibration_equals_the_arrays(tmp_path):
    """PNG files of the subset, with the declared preprocessing, give the same arrays as the .npz."""
    data = np.load(SUBSET)
    pixels = np.rint((data["input"][:20, 0] * FASHION_MNIST_STD + FASHION_MNIST_MEAN) * 255).astype(np.uint8)
    for i, image in enumerate(pixels):
        Image.fromarray(image, mode="L").save(tmp_path / f"{i:03d}.png")
    from qcompiler.data import ImagePreprocess

    model = ir.load(RESNET)
    spec = ImagePreprocess.parse(f"mean={FASHION_MNIST_MEAN},std={FASHION_MNIST_STD},color=L")
    loaded = load_data(tmp_path, model, preprocess=spec)
    assert loaded.count == 20
    np.testing.assert_allclose(loaded.arrays["input"], data["input"][:20], atol=1e-5)


def test_iterator_api():
    from qcompiler.driver import quantize

    images = np.load(SUBSET)["input"][:40]
    result = quantize(ir.load(RESNET), ({"input": images[i:i + 8]} for i in range(0, 40, 8)), progress=False)
    assert result.calibration.count == 40


@pytest.fixture
def bad_data(tmp_path):
    good = np.load(SUBSET)["input"][:16]

    def make(kind: str):
        path = tmp_path / f"{kind}.npz"
        if kind == "nan":
            x = good.copy()
            x[3, 0, 5, 5] = np.nan
            np.savez(path, input=x)
        elif kind == "inf":
            x = good.copy()
            x[0, 0, 0, 0] = np.inf
            np.savez(path, input=x)
        elif kind == "constant":
            np.savez(path, input=np.zeros_like(good))
        elif kind == "wrong_name":
            np.savez(path, images=good)
        elif kind == "wrong_shape":
            np.savez(path, input=good[:, :, :20, :20])
        elif kind == "wrong_rank":
            np.savez(path, input=good[:, 0])
        elif kind == "empty":
            np.savez(path, input=good[:0])
        elif kind == "pickled":
            path = tmp_path / "pickled.npy"
            np.save(path, np.array([{"input": 1}], dtype=object), allow_pickle=True)
        elif kind == "corrupt":
            path.write_bytes(b"PK\x03\x04" + b"\x00" * 40)
        elif kind == "not_numpy":
            path.write_text("hello")
        elif kind == "missing":
            pass
        elif kind == "string_dtype":
            np.savez(path, input=np.array(["a"] * 16).reshape(16, 1, 1, 1))
        return path

    return make


@pytest.mark.parametrize("kind,fragment", [
    ("nan", "1 NaN/Inf values (first in sample 3)"),
    ("inf", "NaN/Inf values (first in sample 0)"),
    ("constant", "is constant"),
    ("wrong_name", "missing arrays for inputs ['input'] (found ['images'])"),
    ("wrong_shape", "has shape [16, 1, 20, 20], the model expects ['N', 1, 28, 28]"),
    ("wrong_rank", "the model expects rank 4"),
    ("empty", "is empty (0 samples)"),
    ("pickled", "pickled Python objects"),
    ("corrupt", "corrupt or not a numpy"),
    ("not_numpy", "not a numpy .npz/.npy file (it starts with b'hello')"),
    ("missing", "no such file"),
    ("string_dtype", "calibration data must be numbers"),
])
def test_bad_calibration_data(kind, fragment, bad_data, tmp_path, capsys):
    path = bad_data(kind)
    out_dir = tmp_path / "out"
    code, out, err = cli(capsys, "quantize", RESNET, "--calib", path, "-o", out_dir)
    assert code == 5, err
    assert fragment in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out_dir.exists()


def test_bad_eval_data_is_exit_5_and_nothing_written(bad_data, tmp_path, capsys):
    code, _, err = cli(capsys, "quantize", RESNET, "--calib", SUBSET, "--eval", bad_data("wrong_name"), "-o", tmp_path / "o")
    assert code == 5 and "evaluation data does not fit" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("args,fragment", [
    (["--preset", "w5a5"], "unknown preset 'w5a5'"),
    (["--observer", "magic"], "unknown observer 'magic'"),
    (["--override", "no-colon"], "expected PATTERN:key=value"),
    (["--override", "x:wbits=9"], "wbits must be one of 2..8 or 16"),
])
def test_bad_options_are_usage_errors(args, fragment, tmp_path, capsys):
    code, _, err = cli(capsys, "quantize", RESNET, "--calib", SUBSET, "-o", tmp_path / "o", *args)
    assert code == 2 and fragment in err
    assert not (tmp_path / "o").exists()


def test_output_dir_that_is_a_file(tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("x")
    code, _, err = cli(capsys, "quantize", RESNET, "--calib", SUBSET, "--calib-count", 16, "-o", target)
    assert code == 6 and "is not a folder" in err


def test_pickle_module_is_never_used(monkeypatch, bad_data, tmp_path, capsys):
    """Loading user data must not unpickle, even through numpy's object arrays."""
    def refuse(*args, **kwargs):
        raise AssertionError("pickle.load called on user data")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    code, _, err = cli(capsys, "quantize", RESNET, "--calib", bad_data("pickled"), "-o", tmp_path / "o")
    assert code == 5


def test_top_level_api_as_documented():
    import qcompiler

    batches = np.split(np.load(SUBSET)["input"][:80], 10)
    result = qcompiler.quantize(qcompiler.load(RESNET), ({"input": b} for b in batches), "w4a8", observer="lp",
                                overrides=["/fc/*:wbits=8"], progress=False)
    assert result.annotated.quant["fc.weight"].spec.bits == 8
    assert result.annotated.quant["layer2.conv1.weight"].spec.bits == 4
    assert result.qdq.opset == 21


def test_an_already_quantized_model_is_refused(tmp_path, capsys):
    assert cli(capsys, "quantize", RESNET, "--calib", SUBSET, "--calib-count", 16, "-o", tmp_path / "a")[0] == 0
    code, _, err = cli(capsys, "quantize", tmp_path / "a" / "model.qdq.onnx", "--calib", SUBSET, "-o", tmp_path / "b")
    assert code == 4 and "already quantized" in err and "quantize the float model" in err
    assert not (tmp_path / "b").exists()


def test_opset9_zoo_model_is_converted_for_qdq(tmp_path, capsys):
    from graphs import LIGHT_DIR

    calib = tmp_path / "calib.npz"
    np.savez(calib, data_0=np.random.default_rng(0).normal(size=(4, 3, 224, 224)).astype(np.float32))
    code, out, err = cli(capsys, "quantize", LIGHT_DIR / "light_squeezenet.onnx", "--calib", calib, "-o", tmp_path / "o")
    assert code == 0, err
    assert ir.load(tmp_path / "o" / "model.qdq.onnx").opset == 13


def test_fewer_samples_than_a_fixed_batch(tmp_path):
    from onnx import helper

    from graphs import make_model
    from qcompiler.errors import CalibrationDataError

    model = make_model([helper.make_node("Relu", ["x"], ["y"])], [("x", [4, 3])], [("y", None)])
    with pytest.raises(CalibrationDataError, match="fixed at 4, but there are only 2 samples"):
        load_data({"x": np.ones((2, 3), np.float32) * np.arange(3)}, model)


def test_training_options_are_checked_before_any_training(tmp_path):
    """--labels without --train is a usage error (2); --labels on data without labels, exit 5,
    before any training; nothing is written."""
    import subprocess
    import sys

    model, calib = ROOT / "models" / "fashion_resnet8.onnx", tmp_path / "calib.npz"
    np.savez(calib, input=np.load(ROOT / "models" / "fashion_mnist_subset.npz")["input"][:32])
    base = [sys.executable, "-m", "qcompiler", "quantize", str(model), "--calib", str(calib), "-o", str(tmp_path / "o")]
    usage = subprocess.run(base + ["--labels"], capture_output=True, text=True)
    assert usage.returncode == 2 and "--labels needs --train" in usage.stderr
    bad = subprocess.run(base + ["--preset", "w4a4", "--train", "qil", "--labels", "--progressive", "4,8"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "decreasing" in bad.stderr
    missing = subprocess.run(base + ["--preset", "w4a4", "--train", "qil", "--labels"], capture_output=True, text=True)
    assert missing.returncode == 5 and "needs a 'labels' array" in missing.stderr, missing.stderr
    assert "epoch" not in missing.stderr and not (tmp_path / "o").exists()
