"""Calibration data read in this process: links out of an image folder, integer arrays."""

from __future__ import annotations

import logging

import numpy as np
from PIL import Image

from qcompiler import ir
from qcompiler.data import load_data
from cli_helpers import RESNET


def test_links_in_an_image_folder_are_not_followed(tmp_path, caplog):
    inside, outside = tmp_path / "images", tmp_path / "private"
    inside.mkdir()
    outside.mkdir()
    Image.fromarray(np.arange(28 * 28, dtype=np.uint8).reshape(28, 28) % 50).save(inside / "a.png")
    Image.new("L", (28, 28), 200).save(outside / "secret.png")   # brighter than anything in a.png
    (inside / "link.png").symlink_to(outside / "secret.png")
    (inside / "folder").symlink_to(outside)
    model = ir.load(RESNET)
    with caplog.at_level(logging.WARNING):
        data = load_data(inside, model)
    assert data.count == 1                          # a.png only: the link and the linked folder are skipped
    assert data.arrays["input"].max() < 50 / 255
    assert "2 links skipped" in caplog.text


def test_integer_calibration_arrays_are_cast_with_a_warning(caplog):
    model = ir.load(RESNET)
    codes = np.random.RandomState(0).randint(0, 255, (4, 1, 28, 28)).astype(np.uint8)
    with caplog.at_level(logging.WARNING):
        data = load_data({"input": codes}, model)
    assert data.arrays["input"].dtype == np.float32
    assert np.array_equal(data.arrays["input"], codes.astype(np.float32))
    assert "is uint8; cast to float32" in caplog.text


def test_models_over_the_protobuf_limit_load_through_the_large_paths(monkeypatch):
    """A 2 GiB model cannot be built in a test: lower the limit so ResNet-8 takes those paths
    (the size check, the checker by path, shape inference without the weights)."""
    import onnx

    small = ir.load(RESNET)
    monkeypatch.setattr(onnx.checker, "MAXIMUM_PROTOBUF", 10_000)
    large = ir.load(RESNET)
    shapes = {t.name: t.shape for t in small.graph.tensors().values()}
    assert {t.name: t.shape for t in large.graph.tensors().values()} == shapes
