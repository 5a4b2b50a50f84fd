"""`qcompiler compile`, `run` and `targets` as a user meets them, and their errors."""

from __future__ import annotations

import json
import re

import numpy as np
import onnx
import pytest
from onnx import helper

from graphs import ROOT, cli
from qcompiler.backends.tvm import targets as target_table
from qcompiler.cli import main
from qcompiler.executor import session
from qcompiler.runtime import load

RESNET = ROOT / "models" / "fashion_resnet8.onnx"
SUBSET = ROOT / "models" / "fashion_mnist_subset.npz"


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """ResNet-8 compiled for the host with batch 4, from the float model and 64 calibration images."""
    folder = tmp_path_factory.mktemp("compiled")
    calib = folder / "calib.npz"
    np.savez(calib, input=np.load(SUBSET)["input"][:64])
    code = main(["compile", str(RESNET), "--calib", str(calib), "--batch", "4", "-o", str(folder / "out"),
                 "--no-progress"])
    assert code == 0
    return folder / "out"


def test_compile_writes_library_metadata_and_qdq(compiled):
    assert {p.name for p in compiled.iterdir()} >= {"model.so", "model.json", "model.qdq.onnx", "report.html"}
    meta = json.loads((compiled / "model.json").read_text())
    assert meta["inputs"] == {"input": {"dtype": "float32", "shape": [4, 1, 28, 28]}}
    assert meta["outputs"] == {"logits": {"dtype": "float32", "shape": [4, 10]}}
    assert meta["target"]["name"] == "native" and meta["float_fallback_ops"] == {}
    assert meta["integer_ops"]["linear"] == 10
    assert meta["quantization"][0]["tensor"] == "input"
    assert not [p for p in compiled.iterdir() if p.name.startswith(".")], "temporary files left behind"


def test_runtime_chunks_any_sample_count(compiled):
    """10 samples through a batch-4 library (3 calls, the last padded) equal the QDQ model."""
    x = np.load(SUBSET)["input"][100:110]
    ours = load(compiled).run({"input": x})["logits"]
    reference = session(onnx.load(compiled / "model.qdq.onnx"), optimize=False).run(None, {"input": x})[0]
    assert ours.shape == (10, 10)
    assert np.array_equal(ours.argmax(1), reference.argmax(1))
    scale = json.loads((compiled / "model.json").read_text())["quantization"][-1]["scale"]
    assert np.abs(ours - reference).max() <= scale * 1.0001


def test_one_batch_run_returns_its_own_arrays(compiled):
    """Exactly one compiled batch takes the short path (no slicing or joining) and gives the
    same outputs as the chunked path; a later run does not change an earlier result (the
    outputs are copies, not views of the library's tensors)."""
    x = np.load(SUBSET)["input"][100:108]
    library = load(compiled)
    first = library.run({"input": x[:4]})["logits"]
    kept = first.copy()
    library.run({"input": x[4:]})
    assert np.array_equal(first, kept)
    assert np.array_equal(first, library.run({"input": x})["logits"][:4])
    assert first.flags.writeable and first.flags.owndata


def test_run_reports_accuracy_timing_and_kernels(compiled, tmp_path, capsys):
    data = np.load(SUBSET)
    np.savez(tmp_path / "x.npz", input=data["input"][:40], labels=data["labels"][:40])
    code, out, err = cli(capsys, "run", compiled, "--input", tmp_path / "x.npz", "--repeat", "5", "--profile")
    assert code == 0, err
    logits = load(compiled).run(data["input"][:40])["logits"]   # an array for a one-input library
    accuracy = float(np.mean(logits.argmax(1) == data["labels"][:40]))
    assert f"top-1 accuracy: {accuracy:.4f} on 40 labelled samples" in out
    assert re.search(r"time per batch of 4: median \d+\.\d+ ms, p10 .* \(5 runs of one batch\)", out)
    # the convolutions, each timed: the VNNI kernel where the host has it, TVM's generic one if not
    kernels = [line for line in out.splitlines() if line.startswith(("fused_conv2d", "qconv2d_"))]
    assert len(kernels) >= 5, out
    # each kernel by TVM's C++ timer; the VM's own calls in one row; the shares add up to a run
    rows = {m[1].strip(): float(m[2]) for m in re.finditer(r"^(.{48}) +\d+ +(\d+\.\d+) +[\d.]+%$", out, re.M)}
    vm_ms = rows.pop("(the VM between kernels)")
    total = float(re.search(r"^total \(a run\) +(\d+\.\d+)$", out, re.M)[1])
    assert vm_ms >= 0 and not any(name.startswith("vm.builtin") for name in rows), out
    assert abs(sum(rows.values()) + vm_ms - total) <= 0.001 * (len(rows) + 2), out


def test_library_says_what_it_is(compiled):
    assert repr(load(compiled)) == (f"<qcompiler library {compiled}: native, batch 4, (input float32[4, 1, 28, 28]) "
                                    "-> (logits float32[4, 10])>")


def test_run_command_writes_outputs(compiled, tmp_path, capsys):
    np.savez(tmp_path / "x.npz", input=np.load(SUBSET)["input"][:5])
    code, out, _ = cli(capsys, "run", compiled, "--input", tmp_path / "x.npz", "-o", tmp_path / "y.npz")
    assert code == 0 and "logits: float32[5, 10]" in out
    assert np.load(tmp_path / "y.npz")["logits"].shape == (5, 10)


def test_compile_accepts_a_qdq_model_without_calibration(compiled, tmp_path, capsys):
    code, out, _ = cli(capsys, "compile", compiled / "model.qdq.onnx", "-o", tmp_path / "again")
    assert code == 0, out
    assert (tmp_path / "again" / "model.so").exists() and not (tmp_path / "again" / "report.html").exists()


def test_run_rejects_wrong_inputs(compiled, tmp_path, capsys):
    np.savez(tmp_path / "bad.npz", input=np.zeros((2, 3, 28, 28), np.float32))
    code, _, err = cli(capsys, "run", compiled, "--input", tmp_path / "bad.npz")
    assert code == 5 and "[N, 1, 28, 28]" in err and len(err.strip().splitlines()) == 1


def test_unknown_target_lists_the_known_ones(tmp_path, capsys):
    code, _, err = cli(capsys, "compile", RESNET, "--calib", SUBSET, "--target", "riscv", "-o", tmp_path / "o")
    assert code == 2 and "native, x86-64-v3, x86-64-v4, x86-avx512-vnni, arm64, arm64-dotprod, arm64-i8mm" in err
    assert not (tmp_path / "o").exists()


def test_float_model_without_calibration_is_a_usage_error(tmp_path, capsys):
    code, _, err = cli(capsys, "compile", RESNET, "-o", tmp_path / "o")
    assert code == 2 and "--calib" in err


def test_missing_cross_compiler_names_the_package(compiled, tmp_path, capsys, monkeypatch):
    """A target whose cross compiler is absent: exit 2, the apt package named, nothing written."""
    missing = target_table.TargetSpec("arm64-test", "test", {"kind": "llvm", "mtriple": "aarch64-linux-gnu"},
                                      "no-such-aarch64-gcc", "gcc-aarch64-linux-gnu")
    monkeypatch.setitem(target_table.TARGETS, "arm64-test", missing)
    code, _, err = cli(capsys, "compile", compiled / "model.qdq.onnx", "--target", "arm64-test", "-o", tmp_path / "o")
    assert code == 2 and "apt-get install gcc-aarch64-linux-gnu" in err
    assert not (tmp_path / "o" / "model.so").exists()


def test_unsupported_ops_are_listed_at_once(tmp_path, capsys):
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["d"]),
             helper.make_node("Det", ["d"], ["y"]),
             helper.make_node("MyOp", ["d"], ["y2"], domain="com.example")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [3, 3])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, []),
                               helper.make_tensor_value_info("y2", onnx.TensorProto.FLOAT, None)],
                              [onnx.numpy_helper.from_array(np.float32(0.1), "s"),
                               onnx.numpy_helper.from_array(np.uint8(0), "z")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("com.example", 1)])
    proto.ir_version = 8
    onnx.save(proto, tmp_path / "m.onnx")
    from qcompiler.backends.tvm.build import check_ops
    from qcompiler.errors import UnsupportedModelError

    with pytest.raises(UnsupportedModelError, match="com.example.MyOp"):
        check_ops(proto, "m.onnx")


def test_unwritable_output_directory(compiled, tmp_path, capsys):
    (tmp_path / "file").write_text("not a folder")
    code, _, err = cli(capsys, "compile", compiled / "model.qdq.onnx", "-o", tmp_path / "file")
    assert code == 6 and "not a folder" in err


def test_targets_command_lists_every_target(capsys):
    code, out, _ = cli(capsys, "targets")
    assert code == 0
    for name in ("native", "x86-64-v3", "x86-64-v4", "x86-avx512-vnni", "arm64", "arm64-dotprod", "arm64-i8mm"):
        assert f"\n{name} " in "\n" + out
    assert "runs here: in process" in out  # native, at least


def test_x86_target_names_the_host_as_before(compiled):
    """`x86`, the old name, is this machine (native): the same TVM target, recorded in model.json."""
    from qcompiler.backends.tvm.targets import get_target, tvm_target

    meta = json.loads((compiled / "model.json").read_text())
    assert meta["target"]["name"] == "native" and meta["target"]["runner"] is None
    assert str(tvm_target(get_target("x86"))) == str(tvm_target(get_target("native")))
    assert meta["target"]["tvm"]["mcpu"] not in ("native", "")   # spelled out: the CPU LLVM found


def test_avx512_vnni_target_builds_vnni_kernels_on_any_x86_host(compiled, tmp_path, capsys):
    """x86-avx512-vnni is portable: built here even without VNNI (then not run or checked here),
    its convolutions on vpdpbusd (disassembly checked)."""
    import subprocess

    from qcompiler.backends.tvm.targets import host_dot_kernels

    code, out, err = cli(capsys, "compile", compiled / "model.qdq.onnx", "--target", "x86-avx512-vnni",
                         "-o", tmp_path / "v")
    assert code == 0, err
    meta = json.loads((tmp_path / "v" / "model.json").read_text())
    assert meta["target"]["dot_kernels"] == ["vnni"] and meta["target"]["tvm"]["mcpu"] == "x86-64-v4"
    assert sum(n for kind, n in meta["kernels"].items() if kind.startswith("vnni")) == 10
    assert all(kind.endswith("+ requantize") for kind in meta["kernels"] if kind.startswith("vnni")), meta["kernels"]
    disassembly = subprocess.run(["objdump", "-d", str(tmp_path / "v" / "model.so")], capture_output=True,
                                 text=True, check=True).stdout
    assert "vpdpbusd" in disassembly
    if host_dot_kernels() != ("vnni",):
        np.savez(tmp_path / "x.npz", input=np.load(SUBSET)["input"][:4])
        code, _, err = cli(capsys, "run", tmp_path / "v", "--input", tmp_path / "x.npz")
        assert code == 3 and "x86-avx512-vnni" in err and "cannot run on this CPU" in err


def test_portable_and_tvm_string_targets_agree_with_native(compiled, tmp_path, capsys):
    """The same QDQ model built for x86-64-v3 (any AVX2 CPU) and for a TVM target string gives
    the library built for this machine's CPU, bit for bit."""
    from qcompiler.runtime import load

    feeds = {"input": np.load(SUBSET)["input"][:8]}
    expected = load(compiled).run(feeds)["logits"]
    for name, target in (("v3", "x86-64-v3"), ("s", "llvm -mcpu=x86-64-v3 -mattr=+avx2,+fma")):
        code, _, err = cli(capsys, "compile", compiled / "model.qdq.onnx", "--target", target, "-o", tmp_path / name)
        assert code == 0, err
        np.testing.assert_array_equal(load(tmp_path / name).run(feeds)["logits"], expected)


def test_bad_tvm_target_string_is_a_usage_error(compiled, tmp_path, capsys):
    for bad in ("llvm mcpu", '{"kind": "llvm", "mcpu": 3', '{"kind": "cuda"}'):
        code, _, err = cli(capsys, "compile", compiled / "model.qdq.onnx", "--target", bad, "-o", tmp_path / "b")
        assert code == 2 and "--target" in err, err
        assert not (tmp_path / "b" / "model.so").exists()


def test_x86_library_uses_this_cpus_dot_products(compiled):
    """With AVX-512 VNNI on the host the convolutions run on vpdpbusd, with AVX2 only on
    vpmaddwd (disassembly checked); without either, the build says it used no such kernel."""
    import subprocess

    from qcompiler.backends.tvm.targets import host_dot_kernels

    meta = json.loads((compiled / "model.json").read_text())
    disassembly = subprocess.run(["objdump", "-d", str(compiled / "model.so")], capture_output=True, text=True,
                                 check=True).stdout
    kernels = host_dot_kernels()
    assert meta["target"]["dot_kernels"] == list(kernels)
    assert meta["kernels"]["residual add"] == 3      # on every target
    dot_kernels = sum(n for kind, n in meta["kernels"].items() if kind.split()[0] in ("vnni", "avx2", "avx2ub"))
    assert dot_kernels == (10 if kernels else 0)     # every conv and the fc layer
    if kernels:
        assert {"vnni": "vpdpbusd", "avx2": "vpmaddwd"}[kernels[0]] in disassembly


def test_x86_64_v3_target_builds_avx2_kernels(compiled, tmp_path, capsys):
    """The portable AVX2 target: every conv and the fc layer on exact vpmaddwd kernels (the
    16-bit vpmaddubsw, which saturates, nowhere)."""
    import subprocess

    code, _, err = cli(capsys, "compile", compiled / "model.qdq.onnx", "--target", "x86-64-v3", "-o", tmp_path / "v3")
    assert code == 0, err
    meta = json.loads((tmp_path / "v3" / "model.json").read_text())
    assert meta["target"]["dot_kernels"] == ["avx2"]
    assert sum(n for kind, n in meta["kernels"].items() if kind.startswith("avx2")) == 10, meta["kernels"]
    disassembly = subprocess.run(["objdump", "-d", str(tmp_path / "v3" / "model.so")], capture_output=True,
                                 text=True, check=True).stdout
    assert "vpmaddwd" in disassembly and "vpmaddubsw" not in disassembly


def test_compile_checks_a_model_with_a_fixed_batch_sample_by_sample(tmp_path, capsys):
    """A model whose input fixes batch 1 (like the ONNX zoo's squeezenet) with 8 calibration
    samples: the host check runs the reference one batch at a time, not 8 at once."""
    rng = np.random.default_rng(0)
    weight = rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32)
    proto = helper.make_model(helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["y"])],
        "fixed", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 8, 8, 8])],
        [onnx.numpy_helper.from_array(weight, "w")]), opset_imports=[helper.make_opsetid("", 13)])
    onnx.save(proto, tmp_path / "fixed.onnx")
    np.savez(tmp_path / "calib.npz", x=rng.normal(0, 1, (8, 3, 8, 8)).astype(np.float32))
    code, out, err = cli(capsys, "compile", tmp_path / "fixed.onnx", "--calib", tmp_path / "calib.npz",
                         "-o", tmp_path / "out", "--no-progress")
    assert code == 0, err
    assert "max 0.00 LSB" in out and "(8 samples)" in out


def test_vector_lanes_are_read_from_the_target(compiled, tmp_path):
    """TargetSpec.vector_lanes reaches the generic rules: 8 lanes build another library that
    computes the same integers."""
    import dataclasses

    from qcompiler import ir
    from qcompiler.backends.tvm.targets import get_target
    from qcompiler.compiler import compile_qdq, write_library

    qdq = ir.load(compiled / "model.qdq.onnx")
    spec = get_target("x86-64-v3")
    feeds = {"input": np.load(SUBSET)["input"][:8]}
    outputs, sizes = [], []
    for lanes in (16, 8):
        folder = tmp_path / f"lanes{lanes}"
        write_library(compile_qdq(qdq, dataclasses.replace(spec, vector_lanes=lanes), 4), qdq, folder)
        assert json.loads((folder / "model.json").read_text())["target"]["vector_lanes"] == lanes
        outputs.append(load(folder).run(feeds)["logits"])
        sizes.append((folder / "model.so").read_bytes())
    assert sizes[0] != sizes[1]
    np.testing.assert_array_equal(outputs[0], outputs[1])


def test_compile_time_lists_every_pass_including_the_backends(compiled, tmp_path, capsys):
    code, out, err = cli(capsys, "compile", RESNET, "--calib", SUBSET, "--calib-count", "16", "--no-progress",
                         "--time", "-o", tmp_path / "t")
    assert code == 0, err
    for name in ("canonicalize", "annotate-quant", "calibrate-ranges", "untie-concats", "insert-qdq",
                 "qcompiler.integer-rewrite", "qcompiler.nhwc-layout", "qcompiler.dot-kernels", "qcompiler.cpu-rules"):
        assert re.search(rf"^{re.escape(name)} +\d+\.\d+", out, re.M), name


def _upsampling_model(kind: str) -> onnx.ModelProto:
    """conv -> relu -> an exporter's upsampling -> conv, on 1x3x16x16."""
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = {"w": rng.normal(0, 0.3, (8, 3, 3, 3)), "w2": rng.normal(0, 0.3, (4, 8, 1, 1))}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1] * 4), helper.make_node("Relu", ["c"], ["r"])]
    if kind == "torch-interpolate-size":   # F.interpolate(size=...) at opset 11: empty roi and scales, sizes
        inits.update(roi=np.array([]), scales=np.array([]), sizes=np.array([1, 8, 32, 32], np.int64))
        nodes.append(helper.make_node("Resize", ["r", "roi", "scales", "sizes"], ["u"], mode="nearest"))
    elif kind == "upsample-opset9":
        inits["scales"] = np.array([1.0, 1.0, 2.0, 2.0])
        nodes.append(helper.make_node("Upsample", ["r", "scales"], ["u"], mode="nearest"))
    else:   # "downsample-0.6": 16 x 0.6 = 9.6, where TVM and ONNX compute different coordinates
        inits.update(roi=np.array([]), scales=np.array([1, 1, 0.6, 0.6]))
        nodes.append(helper.make_node("Resize", ["r", "roi", "scales"], ["u"], mode="linear"))
    nodes.append(helper.make_node("Conv", ["u", "w2"], ["y"]))
    graph = helper.make_graph(nodes, kind, [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 4, "h", "w"])],
                              [numpy_helper.from_array(np.asarray(v, np.int64 if v.dtype == np.int64 else np.float32), k)
                               for k, v in inits.items()])
    opset = {"torch-interpolate-size": 11, "upsample-opset9": 9}.get(kind, 13)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    proto.ir_version = 7
    return proto


@pytest.mark.parametrize("kind", ["torch-interpolate-size", "upsample-opset9"])
def test_exporters_upsampling_compiles_and_follows_its_qdq_model(kind, tmp_path, capsys):
    """Both were internal errors (exit 70): TVM's importer took the empty scales beside sizes for
    both given; insert-qdq's opset upgrade renamed Upsample's output."""
    onnx.save_model(_upsampling_model(kind), str(tmp_path / "m.onnx"))
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(1).normal(0, 1, (8, 3, 16, 16)).astype(np.float32))
    code, out, err = cli(capsys, "compile", tmp_path / "m.onnx", "--calib", tmp_path / "calib.npz", "--no-progress",
                         "-o", tmp_path / "lib")
    assert code == 0, err
    line = next(row for row in out.splitlines() if row.startswith("library vs QDQ model"))
    assert float(line.split("max ")[1].split(" LSB")[0]) <= 1.0, line


def test_a_resize_tvm_would_compute_differently_is_refused_before_calibration(tmp_path, capsys):
    onnx.save_model(_upsampling_model("downsample-0.6"), str(tmp_path / "m.onnx"))
    np.savez(tmp_path / "calib.npz", x=np.zeros((8, 3, 16, 16), np.float32))
    code, out, err = cli(capsys, "compile", tmp_path / "m.onnx", "--calib", tmp_path / "calib.npz", "-o", tmp_path / "lib")
    assert code == 4 and "Resize (scales that do not give whole output sizes)" in err, err
    assert "calibrating" not in err and not (tmp_path / "lib").exists()


@pytest.mark.parametrize("preset", ["w8a8", "w4a8"])
def test_the_library_splits_rows_over_threads_and_computes_the_same_bits(preset, compiled, tmp_path):
    """The kernels' output rows (with packed 4-bit weights: their blocks of output channels) run
    on TVM's thread pool (TVM_NUM_THREADS threads); every thread count gives the same integers."""
    import os
    import subprocess
    import sys

    np.savez(tmp_path / "x.npz", input=np.load(SUBSET)["input"][:8])
    if preset != "w8a8":
        assert main(["compile", str(RESNET), "--calib", str(tmp_path / "x.npz"), "--batch", "4", "--preset", preset,
                     "-o", str(tmp_path / "lib"), "--no-progress"]) == 0
        compiled = tmp_path / "lib"
    assert b"__TVMBackendParallelLaunch" in (compiled / "model.so").read_bytes()
    outputs = {}
    for threads in ("1", "2"):
        out = tmp_path / f"y{threads}.npz"
        done = subprocess.run([sys.executable, "-m", "qcompiler.runtime", str(compiled), "--input",
                               str(tmp_path / "x.npz"), "-o", str(out)], capture_output=True, text=True,
                              env={**os.environ, "TVM_NUM_THREADS": threads}, check=False)
        assert done.returncode == 0, done.stderr
        outputs[threads] = np.load(out)["logits"]
    np.testing.assert_array_equal(outputs["1"], outputs["2"])
