"""The command line as a user meets it: output, files written, exit codes, one-line errors."""

from __future__ import annotations

import re
import subprocess
import sys

import onnx
import pytest

from graphs import ROOT, make_proto, save
from qcompiler import ir, testing
from qcompiler.cli import main

RESNET = ROOT / "models" / "fashion_resnet8.onnx"
MOBILENET = ROOT / "models" / "fashion_mobilenetv2.onnx"


def cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_inspect_bundled_resnet(capsys):
    code, out, err = cli(capsys, "inspect", RESNET)
    assert code == 0, err
    assert "input      input  float32  ['batch', 1, 28, 28]" in out
    assert "BatchNormalization 9" in out
    assert "batchnorm  9 folded into the layer before, 0 became Mul+Add or stay" in out
    assert "quantized layers (10:" in out
    assert "unsupported none" in out


def test_inspect_lists_unsupported_ops_at_once(tmp_path, capsys):
    """What the TVM backend cannot lower (the check compile refuses on), every op type at once."""
    from onnx import helper

    nodes = [helper.make_node("Celu", ["x"], ["a"], name="celu1"), helper.make_node("Celu", ["a"], ["b"], name="celu2"),
             helper.make_node("LpNormalization", ["b"], ["y"], name="norm", axis=1)]
    path = save(make_proto(nodes, [("x", [1, 4])], [("y", None)], opset=13), tmp_path / "odd.onnx")
    code, out, _ = cli(capsys, "inspect", path)
    assert code == 0
    assert "unsupported (2 op types" in out
    assert "Celu x2: celu1, celu2" in out and "LpNormalization x1: norm" in out


def test_optimize_default_pipeline(tmp_path, capsys):
    out_path = tmp_path / "opt.onnx"
    code, out, err = cli(capsys, "optimize", MOBILENET, "-o", out_path, "--time")
    assert code == 0, err
    assert "pipeline   canonicalize -> fold-batchnorm" in out
    assert "BatchNormalization 22->0" in out
    assert "check      same function" in out
    assert "fold-batchnorm" in out.split("seconds")[1]
    model = ir.load(out_path)
    assert not any(n.op == "BatchNormalization" for n in model.nodes)
    feeds = testing.random_inputs(model)
    testing.assert_close(testing.run(model, feeds)[0], testing.run(ir.load(MOBILENET), feeds)[0])


def test_optimize_named_passes_and_dump(tmp_path, capsys):
    out_path = tmp_path / "opt.onnx"
    code, out, err = cli(capsys, "optimize", RESNET, "-o", out_path, "--passes", "fold-constants,remove-identity",
                         "--dump-after", "fold-constants")
    assert code == 0, err
    assert "pipeline   fold-constants -> remove-identity" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["opt.after-fold-constants.onnx", "opt.onnx"]
    assert any(n.op == "BatchNormalization" for n in ir.load(out_path).nodes)


def test_passes_lists_registered(capsys):
    code, out, _ = cli(capsys, "passes")
    assert code == 0
    for name in ("canonicalize", "fold-batchnorm", "fold-constants", "matmul-add-to-gemm", "normalize-clip", "sum-to-add",
                 "remove-identity"):
        assert name in out


@pytest.mark.parametrize("args,code,fragment", [
    (["optimize", "MODEL", "-o", "OUT", "--passes", "no-such-pass"], 2, "unknown pass 'no-such-pass'"),
    (["optimize", "MODEL", "-o", "OUT", "--dump-after", "nope"], 2, "--dump-after ['nope']: not in the pipeline"),
    (["optimize", "MODEL", "-o", "OUT", "--pass", "missing.py:X"], 2, "does not exist"),
    (["optimize", "MODEL"], 2, "the following arguments are required: -o/--output"),
    (["frobnicate"], 2, "invalid choice"),
    (["optimize", "MODEL", "-o", "A_FILE/out.onnx"], 6, "exists and is not a folder"),
])
def test_usage_errors(tmp_path, capsys, args, code, fragment):
    args = [str(RESNET) if a == "MODEL" else a for a in args]
    (tmp_path / "A_FILE").write_text("not a folder")
    args = [str(tmp_path / a) if a in ("OUT", "A_FILE/out.onnx") else a for a in args]
    got, out, err = cli(capsys, *args)
    assert got == code, err
    assert fragment in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "OUT").exists()


def test_nothing_partial_when_a_pass_fails(tmp_path, capsys):
    source = tmp_path / "bad_pass.py"
    source.write_text("from qcompiler.passes import Pass\n\nclass Explodes(Pass):\n"
                      "    def call(self, model):\n        raise RuntimeError('boom')\n")
    code, _, err = cli(capsys, "optimize", RESNET, "-o", tmp_path / "out.onnx", "--pass", f"{source}:Explodes")
    assert code == 70
    assert "internal error: RuntimeError: boom" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad_pass.py"]


def test_entry_point_exit_code_and_no_traceback(tmp_path):
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    proc = subprocess.run([sys.executable, "-m", "qcompiler.cli", "inspect", str(empty)], capture_output=True, text=True)
    assert proc.returncode == 3
    assert proc.stderr.strip() == f"qcompiler: error: {empty}: the file is empty (0 bytes); re-export the model"


def test_output_piped_to_a_reader_that_stops_early_is_not_an_error():
    """`qcompiler passes | head -1` where head is gone before qcompiler writes (`true` reads
    nothing): no 'internal error' and no 'Exception ignored' at exit; exit code 0."""
    proc = subprocess.run(f"set -o pipefail; '{sys.executable}' -m qcompiler passes | true", shell=True,
                          executable="/bin/bash", capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


def test_demo(tmp_path, capsys):
    code, out, err = cli(capsys, "demo", "-o", tmp_path)
    assert code == 0, err
    assert "== qcompiler inspect fashion_resnet8.onnx" in out
    assert "check      same function" in out
    row = next(line for line in out.splitlines() if line.startswith("top-1 float / quantized"))
    float_top1, quant_top1 = (float(v) for v in re.search(r"(\d\.\d+) / (\d\.\d+)", row).groups())
    assert float_top1 >= 0.85 and float_top1 - quant_top1 <= 0.02
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calibration.npz", "evaluation.npz", "library",
                                                          "model.opt.onnx", "model.qdq.onnx", "report.html"]
    assert "== qcompiler run " in out
    library_top1 = float(re.search(r"top-1 accuracy: (\d\.\d+) on 150 labelled samples", out).group(1))
    assert library_top1 == quant_top1, "the compiled library should classify as the QDQ model does"
    assert re.search(r"library vs QDQ model \(onnxruntime\): logits: max (0|1)\.00 LSB", out)
    onnx.checker.check_model(str(tmp_path / "model.qdq.onnx"), full_check=True)
