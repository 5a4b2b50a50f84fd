"""docs/writing_passes.md runs as written: its pass from the CLI by file path, and its test."""

from __future__ import annotations

import re
import subprocess
import sys

from graphs import LIGHT_DIR, ROOT
from qcompiler import ir
from qcompiler.cli import main

DOC = ROOT / "docs" / "writing_passes.md"


def doc_files(tmp_path):
    """Write the doc's python blocks that start with a file-name docstring to tmp_path."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    written = {}
    for block in blocks:
        name = re.match(r'"""(\w+\.py):', block)
        if name:
            (tmp_path / name.group(1)).write_text(block)
            written[name.group(1)] = tmp_path / name.group(1)
    assert sorted(written) == ["my_passes.py", "test_my_passes.py"]
    return written


def test_custom_pass_runs_from_the_cli_by_file_path(tmp_path, capsys):
    files = doc_files(tmp_path)
    out = tmp_path / "logits.onnx"
    code = main(["optimize", str(LIGHT_DIR / "light_squeezenet.onnx"), "-o", str(out),
                 "--pass", f"{files['my_passes.py']}:DropFinalSoftmax", "--time"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "canonicalize -> fold-batchnorm -> fold-scale -> drop-final-softmax" in captured.out
    assert "Softmax 1->0" in captured.out
    optimized = ir.load(out)
    assert not any(n.op == "Softmax" for n in optimized.nodes)
    assert [t.name for t in optimized.graph.outputs] == ["softmaxout_1"]


def test_the_docs_test_passes(tmp_path):
    doc_files(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_my_passes.py"],
                          cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 passed" in proc.stdout


def test_brecq_doc_python_example_runs(tmp_path, capsys):
    """docs/brecq.md's Python example, on the bundled ResNet-8 with a few iterations."""
    (block,) = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "brecq.md").read_text(), re.S)
    code = (block.replace('"model.onnx"', repr(str(ROOT / "models" / "fashion_resnet8.onnx")))
            .replace('"calib.npz"', repr(str(ROOT / "models" / "fashion_mnist_subset.npz")))
            .replace("ReconstructConfig(iters=2000)", "ReconstructConfig(iters=10, act_iters=2, samples=32)")
            .replace('"model.qdq.onnx"', repr(str(tmp_path / "model.qdq.onnx"))))
    assert code.count(str(ROOT)) == 2 and "iters=10" in code
    exec(compile(code, "docs/brecq.md", "exec"), {})
    out = capsys.readouterr().out
    assert (tmp_path / "model.qdq.onnx").exists()
    assert len([line for line in out.splitlines() if line.startswith("block")]) == 5


def test_quantization_doc_recipe_example_runs():
    """docs/quantization.md's preset recipe of one's own, on the bundled ResNet-8."""
    block = next(b for b in re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "quantization.md").read_text(), re.S)
                 if "WeightScheme(" in b)
    code = (block.replace('"model.onnx"', repr(str(ROOT / "models" / "fashion_resnet8.onnx")))
            .replace('"calib.npz"', repr(str(ROOT / "models" / "fashion_mnist_subset.npz"))))
    scope: dict = {}
    exec(compile(code, "docs/quantization.md", "exec"), scope)
    run = scope["run"]
    assert run.config.preset.name == "w6a8"
    specs = [tq.spec for tq in run.annotated.quant.values()]
    assert {s.bits for s in specs if s.signed} == {6, 8}      # 6-bit inside, 8-bit edge layers
    assert {s.observer for s in specs if not s.signed} == {"percentile"}


def test_mixed_precision_doc_python_example_runs(tmp_path, capsys, monkeypatch):
    """docs/mixed_precision.md's Python example as written (run from the repository root)."""
    monkeypatch.setenv("QCOMPILER_CACHE", str(tmp_path))
    monkeypatch.chdir(ROOT)
    (block,) = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "mixed_precision.md").read_text(), re.S)
    exec(compile(block, "docs/mixed_precision.md", "exec"), {})
    out = capsys.readouterr().out
    assert "genetic search, budget size <= 30,000 bytes: reached" in out and "in graph order: 8 " in out
