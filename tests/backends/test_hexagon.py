"""Hexagon targets: the kernels TVM generates for HVX, linked with the generated C driver by
Debian's clang and ld.lld, run under qemu-hexagon (scripts/setup_hexagon.sh, which .ci/run
calls) and agree with the QDQ model in onnxruntime; each kernel, fed the inputs the DSP saw,
computes exactly what the same kernel compiled for this host computes. Without the set-up these
tests fail and say how to make it."""

from __future__ import annotations

import re
import subprocess

import numpy as np
import pytest
from onnx import helper

import qcompiler
from graphs import ROOT, make_model
from qcompiler.backends.tvm import c_driver, hexagon_codegen, kernel_check
from qcompiler.backends.tvm.build import lower, schedule
from qcompiler.backends.tvm.hexagon import tools_missing
from qcompiler.backends.tvm.hexagon_cost import kernel_costs
from qcompiler.backends.tvm.qemu_hexagon import QemuHexagonLibrary
from qcompiler.backends.tvm.targets import get_target, tvm_target
from qcompiler.compiler import compile_qdq, write_library
from qcompiler.errors import UnsupportedModelError
from qcompiler.fidelity import compare
from test_tvm_fidelity import C, _qdq_around, quantized_graph

EM_HEXAGON = 164


@pytest.fixture(scope="module", autouse=True)
def hexagon_tools():
    assert not tools_missing(), f"{tools_missing()} missing: run scripts/setup_hexagon.sh"


def _fashion_qdq(name: str, preset: str):
    data = np.load(ROOT / "models" / "fashion_mnist_subset.npz")
    model = qcompiler.load(ROOT / "models" / f"{name}.onnx")
    return qcompiler.quantize(model, {"input": data["input"][:64]}, preset, progress=False).qdq, data["input"]


@pytest.mark.parametrize("name,preset,target", [("fashion_resnet8", "w8a8", "hexagon-v68"),
                                                ("fashion_mobilenetv2", "w4a4", "hexagon-v73"),
                                                ("fashion_resnet8", "w2a4", "hexagon-v73")])
def test_fashion_models_run_bit_exact_under_qemu(name, preset, target, tmp_path):
    """The whole model against onnxruntime, and every kernel against its host twin."""
    qdq, images = _fashion_qdq(name, preset)
    library = compile_qdq(qdq, target, batch=1)
    write_library(library, qdq, tmp_path)
    hexagon = QemuHexagonLibrary(tmp_path)
    (fidelity,) = compare(qdq.to_onnx(), hexagon, {"input": images[64:72]})
    print(f"{name} {preset} {target} (qemu-hexagon): {fidelity.line()}")
    assert fidelity.max_lsb <= 1.0 + 1e-4, fidelity.line()

    spec = get_target(target)
    packed = {"w4a4": " int4", "w2a4": " int2"}.get(preset, "")
    assert library.kernels[f"vrmpy 1x1 conv2d / matmul{packed} + requantize"] > 0, dict(library.kernels)
    plan = library.executable.plan
    twins = kernel_check.host_twins(lambda: schedule(lower(qdq.to_onnx(), 1), spec, tvm_target(spec))[0])
    feeds = {"input": images[72:73]}
    differences = kernel_check.compare_kernels(twins, plan, feeds, hexagon.trace(feeds))
    assert len(differences) == len(plan.calls) > 10
    assert all(d.mismatched == 0 for d in differences), [d for d in differences if d.mismatched]


_STORE = re.compile(r"\bv?mem\w*\([^)]*\)\s*=")
_LOAD = re.compile(r"=\s*v?mem\w*\(")


def store_before_load_packets(disassembly: str) -> list[str]:
    """Packets (llvm-objdump text) with a store listed before a load: a store in slot 1 with a
    load in slot 0, which from v65 on the load sees ("mem_noshuf"), and which qemu-hexagon 7.2
    can get wrong (hexagon_codegen.LLVM_OPTIONS)."""
    found, packet = [], []
    for line in disassembly.splitlines():
        fields = line.split("\t")
        if len(fields) < 4 or not re.match(r"\s*[0-9a-f]+:$", fields[0]):
            continue
        text = fields[-1].strip()
        if text.startswith("{"):
            packet = []
        packet += [part.strip(" {}") for part in text.split(";")]
        if text.endswith("}") or ":endloop" in text:
            stores = [i for i, insn in enumerate(packet) if _STORE.search(insn)]
            loads = [i for i, insn in enumerate(packet) if _LOAD.search(insn)]
            if stores and loads and stores[0] < loads[-1]:
                found.append(" ; ".join(packet))
            packet = []
    return found


def test_squeeze_excitation_1x1_conv_of_a_pooled_input_is_bit_exact_under_qemu(tmp_path):
    """lcnet_paddle's squeeze-excitation expansion: global average pool, then a 1x1 conv from 128 to
    256 channels. Its int64 requantization of each 32-lane block is scalarized and spilled, and LLVM
    stored and reloaded lane 8 in one packet (a slot-1 store and a slot-0 load of the same stack
    slot). qemu-hexagon 7.2 returned the old data for that load, so output channels 8, 40, ...,
    232 came out wrong, by up to 127 LSB. The kernels are now built without such packets
    (hexagon_codegen.LLVM_OPTIONS)."""
    rng = np.random.default_rng(0)
    cin, cout = 128, 256
    inits = {"w0": rng.normal(0, 0.3, (cin, 8, 1, 1)).astype(np.float32),
             "w": rng.normal(0, 0.1, (cout, cin, 1, 1)).astype(np.float32),
             "b": rng.normal(0, 0.1, cout).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w0"], ["a"], name="expand"), helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["g"]), helper.make_node("Conv", ["g", "w", "b"], ["y"])]
    model = make_model(nodes, [("x", [1, 8, 4, 4])], [("y", None)], inits, opset=13)
    qdq = qcompiler.quantize(model, {"x": rng.normal(0, 1, (32, 8, 4, 4)).astype(np.float32)}, "w8a8",
                             progress=False).qdq
    library = compile_qdq(qdq, "hexagon-v68", batch=1)
    write_library(library, qdq, tmp_path)
    hexagon = QemuHexagonLibrary(tmp_path)
    feeds = {"x": rng.normal(0, 1, (1, 8, 4, 4)).astype(np.float32)}
    (fidelity,) = compare(qdq.to_onnx(), hexagon, feeds)
    print(f"squeeze-excitation 128 -> 256 hexagon-v68 (qemu-hexagon): {fidelity.line()}")
    assert fidelity.max_lsb <= 1.0 + 1e-4, fidelity.line()

    spec = get_target("hexagon-v68")
    plan = library.executable.plan
    assert any(k.startswith(f"qconv2d_vrmpy_1x1x1x{cin}_{cout}x1x1") for k, _ in plan.calls), plan.calls
    twins = kernel_check.host_twins(lambda: schedule(lower(qdq.to_onnx(), 1), spec, tvm_target(spec))[0])
    differences = kernel_check.compare_kernels(twins, plan, feeds, hexagon.trace(feeds))
    assert len(differences) == len(plan.calls)
    assert all(d.mismatched == 0 for d in differences), [d for d in differences if d.mismatched]
    disassembly = subprocess.run(["llvm-objdump-14", "-d", "--mattr=+hvxv68,+hvx-length128b",
                                  str(tmp_path / "model_hvx.o")], capture_output=True, text=True, check=True).stdout
    assert not store_before_load_packets(disassembly), store_before_load_packets(disassembly)[:5]


def test_library_files_are_hexagon_code_with_hvx_and_a_complete_driver(tmp_path):
    qdq, _ = _fashion_qdq("fashion_resnet8", "w8a8")
    library = compile_qdq(qdq, "hexagon-v68", batch=2)
    paths = write_library(library, qdq, tmp_path)
    names = {p.name for p in paths}
    assert {"model_hvx.o", "model_hvx.so", "qc_model.c", "qc_model.h", "model_weights.bin", "Makefile"} <= names
    for binary in ("model_hvx.o", "model_hvx.so"):
        header = (tmp_path / binary).read_bytes()[:20]
        assert header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == EM_HEXAGON
    disassembly = subprocess.run(["llvm-objdump-14", "-d", "--mattr=+hvxv68,+hvx-length128b",
                                  str(tmp_path / "model_hvx.o")], capture_output=True, text=True, check=True).stdout
    hvx = len(re.findall(r"\bv\d+(:\d+)?(\.\w+)? = ", disassembly))
    assert hvx > 1000, hvx   # vector code, not scalar loops
    assert not store_before_load_packets(disassembly), store_before_load_packets(disassembly)[:5]
    assert len(re.findall(r"\bvrmpy\(", disassembly)) >= library.kernels.total() - library.kernels["residual add"]
    costs = kernel_costs(disassembly)
    assert sum(c.vrmpy for c in costs) == len(re.findall(r"\bvrmpy\(", disassembly))
    on_vrmpy = [c for c in costs if c.kernel.startswith("qconv2d_vrmpy")]
    vrmpy_kernels = {k for k, _ in library.executable.plan.calls if k.startswith("qconv2d_vrmpy")}
    assert len(on_vrmpy) == len(vrmpy_kernels) >= 8 and all(1 <= c.packets_per_vrmpy < 20 for c in on_vrmpy), on_vrmpy
    assert "| qconv2d_vrmpy_" in (tmp_path / "hvx_cost.md").read_text()
    plan = library.executable.plan
    source = (tmp_path / "qc_model.c").read_text()
    assert all(f"QC_CALL({kernel}," in source for kernel, _ in plan.calls)
    assert (tmp_path / "model_weights.bin").stat().st_size == plan.weight_bytes()
    header = (tmp_path / "qc_model.h").read_text()
    assert "int qc_model_run(const float* in0, float* out0);" in header and "'input', float32 [2, 1, 28, 28]" in header


@pytest.mark.parametrize("kind,preset", [
    ("depthwise-relu6", "w4a4"), ("concat", "w8a8"), ("conv-stride2-asymmetric-pads", "w8a8"),
    ("global-pool-flatten-gemm", "w4a4"), ("depthwise48-stride2", "w2a4"), ("residual-add", "w2a4"),
    ("grouped-conv", "w8a8"), ("grouped-conv-8-per-group", "w4a4"), ("channel-shuffle", "w8a8"), ("maxpool-conv", "w4a4"), ("conv-avgpool", "w8a8"),
    ("dilated-conv", "w2a4"), ("matmul-add", "w8a8"), ("squeeze-excitation", "w8a8"), ("swish", "w4a4"),
    ("preactivation-bn", "w8a8"), ("conv-transpose-upsample", "w8a8"), ("conv-transpose-overlapping", "w4a4")])
def test_generated_graphs_under_qemu_hexagon(kind, preset, tmp_path):
    rng = np.random.default_rng(0)
    qdq = quantized_graph(kind, preset, rng)
    library = compile_qdq(qdq, "hexagon-v68", batch=3)
    write_library(library, qdq, tmp_path)
    feeds = {"x": rng.normal(0, 1, (7, C, 12, 12)).astype(np.float32)}   # 7 = two batches of 3 and a padded one
    (fidelity,) = compare(qdq.to_onnx(), QemuHexagonLibrary(tmp_path), feeds)
    print(f"{kind} {preset} hexagon-v68 (qemu-hexagon): {fidelity.line()}")
    assert fidelity.max_lsb <= 1.0 + 1e-4, fidelity.line()


def test_a_model_with_two_outputs_runs_under_qemu_hexagon(tmp_path):
    """The driver returns every output (a detector's boxes and scores): main's body is then a
    var bound to a tuple, which the plan takes apart."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], kernel_shape=[1, 1]), helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("Conv", ["r", "w2"], ["b"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])]
    model = make_model(nodes, [("x", ["N", C, 12, 12])], [("r", None), ("b", None)],
                       {"w1": rng.normal(0, 0.3, (16, C, 1, 1)).astype(np.float32),
                        "w2": rng.normal(0, 0.3, (4, 16, 3, 3)).astype(np.float32)}, opset=13)
    qdq = qcompiler.quantize(model, {"x": rng.normal(0, 1, (16, C, 12, 12)).astype(np.float32)}, "w8a8",
                             progress=False).qdq
    library = compile_qdq(qdq, "hexagon-v68", batch=2)
    write_library(library, qdq, tmp_path)
    fidelities = compare(qdq.to_onnx(), QemuHexagonLibrary(tmp_path), {"x": rng.normal(0, 1, (4, C, 12, 12)).astype(np.float32)})
    assert [f.output for f in fidelities] == ["r", "b"]
    assert all(f.max_lsb <= 1.0 + 1e-4 for f in fidelities), [f.line() for f in fidelities]


def test_one_tensor_as_two_outputs_is_refused_not_left_unwritten():
    """y and Identity(y) are one tensor to the driver: naming it out1 too would leave out0 unwritten."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], kernel_shape=[1, 1]), helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("Identity", ["r"], ["z"])]
    model = make_model(nodes, [("x", ["N", C, 12, 12])], [("r", None), ("z", None)],
                       {"w1": rng.normal(0, 0.3, (16, C, 1, 1)).astype(np.float32)}, opset=13)
    qdq = qcompiler.quantize(model, {"x": rng.normal(0, 1, (16, C, 12, 12)).astype(np.float32)}, "w8a8",
                             progress=False).qdq
    with pytest.raises(UnsupportedModelError, match="cannot return output 1.*one tensor as two outputs"):
        compile_qdq(qdq, "hexagon-v68", batch=1)


def test_float_fallback_is_refused_unless_allowed():
    """Softmax stays float: refused by default; allowed, TVM's Hexagon code generator has no exp
    for it, which is a clear exit 4 too (not an internal error)."""
    qdq = _qdq_around("Softmax", axis=-1)
    with pytest.raises(UnsupportedModelError, match=r"hexagon-v68: 1 op\(s\) would run in scalar float.*softmax"):
        compile_qdq(qdq, "hexagon-v68", batch=2)
    with pytest.raises(UnsupportedModelError, match=r"Hexagon code generator cannot compile llvm.exp"):
        compile_qdq(qdq, "hexagon-v68", batch=2, allow_float=True)


def test_driver_plan_reuses_storage_and_names_every_output():
    qdq, _ = _fashion_qdq("fashion_resnet8", "w8a8")
    spec = get_target("hexagon-v68")
    plan = c_driver.plan(hexagon_codegen.planned_main(schedule(lower(qdq.to_onnx(), 1), spec, tvm_target(spec))[0]))
    activations = sum(int(np.prod(t.shape)) * np.dtype(t.dtype).itemsize for t in plan.tensors.values()
                      if t.base in plan.storages)
    assert sum(plan.storages.values()) < activations / 2   # Relax's plan shares storages between layers
    assert [t.shape for t in plan.outputs] == [[1, 10]] and plan.outputs[0].base == "(void*)out0"
