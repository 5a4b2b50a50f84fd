"""The same inputs and seed give byte-identical outputs: QDQ models and libraries."""

from __future__ import annotations

from cli_helpers import RESNET, qcompiler


def test_quantize_and_compile_twice_give_the_same_bytes(tmp_path, calib):
    outputs = []
    for run in ("a", "b"):
        out = tmp_path / run
        result = qcompiler("compile", RESNET, "--calib", calib, "-o", out, "--preset", "w4a8", "--no-progress")
        assert result.code == 0, result.err
        outputs.append({name: (out / name).read_bytes() for name in ("model.qdq.onnx", "model.so", "model.json")})
    for name in outputs[0]:
        assert outputs[0][name] == outputs[1][name], f"{name} differs between two identical runs"
