"""The accuracies in models/README.md, re-measured from the bundled files."""

from __future__ import annotations

import re

import numpy as np
import onnxruntime as ort
import pytest

from graphs import ROOT
from qcompiler import models
from qcompiler.models.datasets import load_fashion_mnist

README = (ROOT / "models" / "README.md").read_text()


def readme_row(file_name: str) -> list[str]:
    row = next(line for line in README.splitlines() if line.startswith(f"| `{file_name}`"))
    return [cell.strip() for cell in row.strip("|").split("|")]


def top1(file_name: str, images: np.ndarray, labels: np.ndarray) -> float:
    session = ort.InferenceSession(str(models.path(file_name)), providers=["CPUExecutionProvider"])
    logits = np.concatenate([session.run(None, {"input": images[i:i + 1000]})[0] for i in range(0, len(images), 1000)])
    return float((logits.argmax(1) == labels).mean())


@pytest.mark.parametrize("file_name", ["fashion_resnet8.onnx", "fashion_mobilenetv2.onnx"])
def test_full_test_set_accuracy_matches_readme(file_name):
    images, labels = load_fashion_mnist("test")
    assert len(labels) == 10_000
    assert f"{top1(file_name, images, labels):.4f}" == readme_row(file_name)[3]


def test_resnet_reaches_the_target():
    assert float(readme_row("fashion_resnet8.onnx")[3]) >= 0.91


def test_subset_accuracy_matches_readme():
    data = np.load(models.path(models.FASHION_SUBSET), allow_pickle=False)
    assert data["input"].shape == (300, 1, 28, 28) and np.bincount(data["labels"]).tolist() == [30] * 10
    images, labels = load_fashion_mnist("test")
    assert np.array_equal(images[data["test_indices"]], data["input"])
    assert np.array_equal(labels[data["test_indices"]], data["labels"])
    measured = {name: top1(f"fashion_{key}.onnx", data["input"], data["labels"])
                for name, key in (("ResNet-8", "resnet8"), ("MobileNetV2", "mobilenetv2"))}
    cell = readme_row("fashion_mnist_subset.npz")[3]
    assert cell == f"ResNet-8 {measured['ResNet-8']:.4f}, MobileNetV2 {measured['MobileNetV2']:.4f}"


def test_parameter_counts_match_readme(capsys):
    from qcompiler.cli import main

    for file_name in ("fashion_resnet8.onnx", "fashion_mobilenetv2.onnx", "mobilenet_v2_imagenet.onnx"):
        assert main(["inspect", str(models.path(file_name))]) == 0
        params = re.search(r"parameters ([\d,]+)", capsys.readouterr().out).group(1)
        assert params == readme_row(file_name)[2]


def test_imagenet_model_on_foolbox_samples_matches_readme():
    from qcompiler.models.datasets import load_foolbox_imagenet

    images, labels = load_foolbox_imagenet()
    correct = round(top1("mobilenet_v2_imagenet.onnx", images, labels) * len(labels))
    assert f"{correct}/{len(labels)}" == readme_row("mobilenet_v2_imagenet.onnx")[3]
