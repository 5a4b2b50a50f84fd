"""Outputs appear whole or not at all: existing ones are refused without --force, an output
that is an input is refused always, stale ones go, and Ctrl-C at any point leaves nothing new."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from cli_helpers import RESNET, ROOT, listing, one_error, qcompiler


def test_existing_outputs_are_refused_without_force(tmp_path, qdq_model):
    out = tmp_path / "lib"
    out.mkdir()
    (out / "model.so").write_bytes(b"an earlier library")
    before = listing(out)
    one_error(qcompiler("compile", qdq_model, "-o", out), 6, "model.so", "--force")
    assert listing(out) == before


def test_an_output_that_is_an_input_is_refused_even_with_force(tmp_path, qdq_model):
    copy = tmp_path / "model.onnx"
    copy.write_bytes(RESNET.read_bytes())
    one_error(qcompiler("optimize", copy, "-o", copy, "--force"), 6, "is an input")
    assert copy.read_bytes() == RESNET.read_bytes()
    one_error(qcompiler("compile", qdq_model, "-o", qdq_model.parent, "--force"), 6, "is an input")


def test_force_replaces_the_set_and_removes_stale_outputs(tmp_path, qdq_model):
    out = tmp_path / "lib"
    out.mkdir()
    (out / "report.html").write_text("a report from an earlier run")
    (out / "notes.txt").write_text("not ours")
    result = qcompiler("compile", qdq_model, "-o", out, "--force")
    assert result.code == 0, result.err
    assert sorted(listing(out)) == ["model.json", "model.qdq.onnx", "model.so", "notes.txt"]


def _interrupt_when(args, marker: str, tmp_path, delay: float = 0.5):
    """Start the command, send SIGINT `delay` s after `marker` appears on stderr; (code, stderr)."""
    process = subprocess.Popen([sys.executable, "-m", "qcompiler", *map(str, args)], cwd=ROOT,
                               stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    seen = []
    for line in process.stderr:
        seen.append(line)
        if marker in line:
            time.sleep(delay)
            process.send_signal(signal.SIGINT)
            break
    rest = process.stderr.read()
    code = process.wait(timeout=120)
    return code, "".join(seen) + rest


def test_ctrl_c_during_calibration_leaves_nothing(tmp_path, calib):
    out = tmp_path / "out"
    code, err = _interrupt_when(["quantize", RESNET, "--calib", calib, "-o", out, "--observer", "kl"],
                                "calibrating", tmp_path, delay=0.0)
    assert code == 130, err
    assert "interrupted; no partial output was left" in err
    assert not out.exists()


def test_ctrl_c_during_the_tvm_build_leaves_nothing_and_old_outputs_whole(tmp_path, qdq_model):
    out = tmp_path / "lib"
    out.mkdir()
    (out / "model.so").write_bytes(b"an earlier library")
    before = listing(out)
    code, err = _interrupt_when(["compile", qdq_model, "-o", out, "--force"], "building for", tmp_path, delay=1.5)
    assert code == 130, err
    assert listing(out) == before   # no staging folder left, the old file untouched


def test_ctrl_c_during_reconstruction_leaves_nothing(tmp_path, calib):
    out = tmp_path / "out"
    code, err = _interrupt_when(["quantize", RESNET, "--calib", calib, "-o", out, "--preset", "w4a8",
                                 "--reconstruct", "brecq", "--iters", "2000"], " rounding ", tmp_path, delay=1.0)
    assert code == 130, err
    assert not out.exists()
