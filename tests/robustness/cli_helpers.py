"""Driving the `qcompiler` command in a subprocess, as a user runs it (tests/robustness)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


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
