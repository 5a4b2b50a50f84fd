"""Helpers for driving the `qcompiler` command in a subprocess, as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
RESNET = ROOT / "models" / "fashion_resnet8.onnx"
SUBSET = ROOT / "models" / "fashion_mnist_subset.npz"


@dataclass
class Result:
    code: int
    out: str
    err: str

    def error_lines(self) -> list[str]:
        """stderr without log lines (WARNING/INFO ...) and progress: what the user is told."""
        return [line for line in self.err.splitlines()
                if line.strip() and not line.startswith(("WARNING", "INFO", "DEBUG", "building for", "calibrating"))]


def qcompiler(*args, timeout: float = 600) -> Result:
    """Run the installed console entry point (the supervised one) with `args`."""
    command = [sys.executable, "-m", "qcompiler", *map(str, args)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    return Result(done.returncode, done.stdout, done.stderr)


def one_error(result: Result, code: int, *fragments: str) -> str:
    """Assert the command failed with `code` and said so in one line containing `fragments`."""
    lines = result.error_lines()
    assert result.code == code, (result.code, result.err)
    assert len(lines) == 1, result.err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def listing(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (hidden ones included) with its bytes: the state to compare."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


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
