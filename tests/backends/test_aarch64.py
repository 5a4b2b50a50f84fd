"""aarch64 targets: cross-compiled libraries are AArch64 ELF files and, run under qemu-aarch64
with an arm64 Python (scripts/setup_aarch64.sh, which .ci/run calls), agree with the QDQ model
in onnxruntime as the x86 library does. Needs that set-up; without it these tests fail and say
how to make it."""

from __future__ import annotations

import re

import numpy as np
import pytest

import qcompiler
from graphs import ROOT
from qcompiler.backends.tvm.qemu import QemuLibrary, environment
from qcompiler.compiler import compile_qdq, write_library
from qcompiler.fidelity import compare
from test_tvm_fidelity import C, quantized_graph

ARM_TARGETS = ["arm64", "arm64-dotprod", "arm64-i8mm"]
EM_AARCH64 = 183


@pytest.fixture(scope="module", autouse=True)
def aarch64_environment():
    environment()   # a UsageError naming scripts/setup_aarch64.sh when it is missing


def _build_and_run(qdq, feeds, folder, target, batch):
    library = compile_qdq(qdq, target, batch)
    write_library(library, qdq, folder)
    return compare(qdq.to_onnx(), QemuLibrary(folder), feeds)


@pytest.mark.parametrize("target,sdot,smmla", [("arm64", False, False), ("arm64-dotprod", True, False),
                                               ("arm64-i8mm", True, True)])
def test_libraries_are_aarch64_elf_with_the_targets_dot_products(target, sdot, smmla, tmp_path):
    """Disassembly: dotprod libraries run their convolutions on sdot, i8mm ones on smmla (sdot
    for the layers of odd width), plain NEON on neither."""
    import subprocess

    data = np.load(ROOT / "models" / "fashion_mnist_subset.npz")
    model = qcompiler.load(ROOT / "models" / "fashion_resnet8.onnx")
    qdq = qcompiler.quantize(model, {"input": data["input"][:32]}, "w8a8", progress=False).qdq
    library = compile_qdq(qdq, target, 1)
    write_library(library, qdq, tmp_path)
    header = (tmp_path / "model.so").read_bytes()[:20]
    assert header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == EM_AARCH64
    disassembly = subprocess.run(["aarch64-linux-gnu-objdump", "-d", str(tmp_path / "model.so")],
                                 capture_output=True, text=True, check=True).stdout
    sdots, smmlas = (len(re.findall(rf"\b{op}\b", disassembly)) for op in ("sdot", "smmla"))
    assert (sdots > 0) == sdot and (smmlas > 0) == smmla, (sdots, smmlas)
    dot_kernels = sum(n for kind, n in library.kernels.items() if kind.split()[0] in ("sdot", "smmla"))
    assert (dot_kernels == 10) == sdot, dict(library.kernels)   # every conv and the fc layer
    assert library.kernels["residual add"] == 3, dict(library.kernels)   # on every target


@pytest.mark.parametrize("target", ARM_TARGETS)
@pytest.mark.parametrize("name", ["fashion_resnet8", "fashion_mobilenetv2"])
def test_fashion_models_under_qemu(name, target, tmp_path):
    data = np.load(ROOT / "models" / "fashion_mnist_subset.npz")
    model = qcompiler.load(ROOT / "models" / f"{name}.onnx")
    qdq = qcompiler.quantize(model, {"input": data["input"][:128]}, "w8a8", progress=False).qdq
    (fidelity,) = _build_and_run(qdq, {"input": data["input"][128:192]}, tmp_path, target, batch=16)
    print(f"{name} {target} (qemu): {fidelity.line()}")
    assert fidelity.max_lsb <= 1.0 + 1e-4, fidelity.line()


@pytest.mark.parametrize("preset", ["w8a8", "w4a4"])
@pytest.mark.parametrize("kind", ["depthwise-relu6", "residual-add", "concat", "conv-stride2-asymmetric-pads",
                                  "dilated-conv", "global-pool-flatten-gemm", "conv-transpose-overlapping",
                                  "grouped-conv-8-per-group"])
def test_generated_graphs_under_qemu(kind, preset, tmp_path):
    rng = np.random.default_rng(0)
    qdq = quantized_graph(kind, preset, rng)
    feeds = {"x": rng.normal(0, 1, (8, C, 12, 12)).astype(np.float32)}
    target = "arm64-i8mm" if preset == "w8a8" else "arm64-dotprod"   # smmla takes 8-bit weights
    (fidelity,) = _build_and_run(qdq, feeds, tmp_path, target, batch=4)
    print(f"{kind} {preset} {target} (qemu): {fidelity.line()}")
    assert fidelity.max_lsb <= 1.0 + 1e-4, fidelity.line()


def test_compile_checks_a_cross_built_library_under_qemu(tmp_path, capsys, monkeypatch):
    """compile runs the arm64 library it wrote under qemu on a few calibration samples, as it
    checks a host library in process; without the emulator it says the library is unchecked."""
    from graphs import cli

    images = np.load(ROOT / "models" / "fashion_mnist_subset.npz")["input"][:16]
    np.savez(tmp_path / "calib.npz", input=images)
    model = ROOT / "models" / "fashion_resnet8.onnx"
    code, out, err = cli(capsys, "compile", model, "--calib", tmp_path / "calib.npz", "--target", "arm64-dotprod",
                         "--no-progress", "-o", tmp_path / "lib")
    assert code == 0, err
    line = next(row for row in out.splitlines() if row.startswith("library vs QDQ model"))
    assert "the library under qemu-aarch64" in line and "(4 samples)" in line, line
    assert float(line.split("max ")[1].split(" LSB")[0]) <= 1.0, line
    monkeypatch.setenv("QCOMPILER_AARCH64", str(tmp_path / "nowhere"))
    code, out, err = cli(capsys, "compile", model, "--calib", tmp_path / "calib.npz", "--target", "arm64-dotprod",
                         "--no-progress", "-o", tmp_path / "lib2")
    assert code == 0, err
    assert "library vs QDQ model: not checked under qemu-aarch64: no aarch64 environment" in out, out
