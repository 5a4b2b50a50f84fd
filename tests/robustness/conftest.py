"""Fixtures of the robustness tests: a quantized model and a library, made once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cli_helpers import RESNET, SUBSET, qcompiler


@pytest.fixture(scope="session")
def calib(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "calib.npz"
    np.savez(path, input=np.load(SUBSET)["input"][:32])
    return path


@pytest.fixture(scope="session")
def qdq_model(tmp_path_factory, calib) -> Path:
    """A W8A8 QDQ ResNet-8, quantized once for the tests that need one."""
    out = tmp_path_factory.mktemp("qdq")
    result = qcompiler("quantize", RESNET, "--calib", calib, "-o", out, "--no-progress")
    assert result.code == 0, result.err
    return out / "model.qdq.onnx"


@pytest.fixture(scope="session")
def library(tmp_path_factory, qdq_model) -> Path:
    out = tmp_path_factory.mktemp("lib") / "library"
    result = qcompiler("compile", qdq_model, "-o", out)
    assert result.code == 0, result.err
    return out
