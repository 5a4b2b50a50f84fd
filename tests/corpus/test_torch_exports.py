"""Exporter-made models: small torchvision networks exported by torch's TorchScript exporter (old
opsets) and its dynamo exporter (opset 18), each with a dynamic batch, shipped in
tests/corpus/torch (made by qcompiler.models.recipes.torch_corpus; manifest.json says by what).
Every file inspects with nothing unsupported, quantizes at W8A8 and W4A8 keeping its dynamic
batch, and five of them (both exporters; residual adds, squeeze-excitation lookup tables and
products, dynamo's ReduceMean pooling, a flatten and channel shuffles computed from Shape) compile for the host with the
library following its QDQ model."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from graphs import ROOT, cli

sys.path.insert(0, str(ROOT / "benchmarks"))
from wild import worst_layer  # noqa: E402

FOLDER = ROOT / "tests" / "corpus" / "torch"
MANIFEST = json.loads((FOLDER / "manifest.json").read_text())
FILES = sorted(MANIFEST["files"])

#: Compiled here (the others quantize only), and how far the library's logits may be from its QDQ
#: model's, end to end, in LSBs of the output scale (every layer is within 1 LSB fed the same
#: inputs: asserted; later layers can grow a 1-LSB difference).
COMPILED = {
    "resnet-dynamo-opset18.onnx": 2.0, "regnet-dynamo-opset18.onnx": 6.0,
    "mobilenet_v2-torchscript-opset11.onnx": 24.0,   # view(x.size(0), -1): Shape -> Gather -> Concat -> Reshape
    "shufflenet_v2-torchscript-opset11.onnx": 1.0,   # ten rounds of shape folding (qcompiler/ir/fold.py)
    "mobilenet_v3_small-dynamo-opset18.onnx": 3.0,   # ReduceMean pooling after HardSwish, squeeze-excitation
}
#: What stays float in the library. TorchScript's `chunk` at opset 11 is a Slice, which runs in
#: float between its DequantizeLinear and QuantizeLinear (dynamo's is a Split, lowered to integer).
FLOAT_ALLOWED = {"shufflenet_v2-torchscript-opset11.onnx": {"strided_slice"}}


def inputs(count: int, seed: int) -> dict[str, np.ndarray]:
    shape = MANIFEST["input"][1:]
    return {"input": np.random.default_rng(seed).standard_normal((count, *shape)).astype(np.float32)}


@pytest.fixture(scope="module")
def calib(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("torch") / "calib.npz"
    np.savez(path, **inputs(16, 0))
    return path


def test_the_manifest_lists_every_shipped_file_and_its_makers():
    assert sorted(p.name for p in FOLDER.glob("*.onnx")) == FILES
    assert MANIFEST["torch"] and MANIFEST["torchvision"]
    for name, made in MANIFEST["files"].items():
        proto = onnx.load(str(FOLDER / name))
        assert {o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")} == {made["opset"]}
        assert proto.producer_name == "pytorch"
        assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param, f"{name}: the batch is dynamic"
    assert {made["exporter"] for made in MANIFEST["files"].values()} == {"torchscript", "dynamo"}


def test_a_torchscript_export_computes_its_flatten_target_at_run_time():
    proto = onnx.load(str(FOLDER / "mobilenet_v2-torchscript-opset11.onnx"))
    producers = {o: n for n in proto.graph.node for o in n.output}
    reshape = next(n for n in proto.graph.node if n.op_type == "Reshape")
    chain, tensor = [], reshape.input[1]
    while tensor in producers and chain[-1:] != ["Shape"]:
        node = producers[tensor]
        chain.append(node.op_type)
        tensor = node.input[0]
    assert chain == ["Concat", "Unsqueeze", "Gather", "Shape"], chain


@pytest.mark.parametrize("name", FILES)
def test_inspect_and_quantize(name, calib, tmp_path, capsys):
    model = FOLDER / name
    code, out, err = cli(capsys, "inspect", model)
    assert code == 0, err
    assert "unsupported none" in out, out
    last = out.strip().splitlines()[-1]
    float_ops = last.split("float fallback: ", 1)[1]
    assert (float_ops == "none") == (name not in FLOAT_ALLOWED), last
    for preset in ("w8a8", "w4a8"):
        code, out, err = cli(capsys, "quantize", model, "--calib", calib, "--preset", preset, "--no-progress",
                             "-o", tmp_path / preset)
        assert code == 0, err
        qdq = onnx.load(str(tmp_path / preset / "model.qdq.onnx"))
        assert not {"Shape", "Gather"} & {n.op_type for n in qdq.graph.node}
        assert qdq.graph.input[0].type.tensor_type.shape.dim[0].dim_param, "the dynamic batch survives"


@pytest.mark.parametrize("name", sorted(COMPILED))
def test_compiled_library_follows_its_qdq_model(name, calib, tmp_path, capsys):
    import qcompiler
    from qcompiler.compiler import compile_qdq, write_library
    from qcompiler.fidelity import compare
    from qcompiler.runtime import load

    code, _, err = cli(capsys, "quantize", FOLDER / name, "--calib", calib, "--no-progress", "-o", tmp_path / "q")
    assert code == 0, err
    qdq = qcompiler.load(tmp_path / "q" / "model.qdq.onnx")
    library = compile_qdq(qdq, "native", 1)
    write_library(library, qdq, tmp_path / "lib")
    proto, held_out = qdq.to_onnx(), inputs(32, 1)
    (fidelity,) = compare(proto, load(tmp_path / "lib"), held_out)
    layer_lsb, layer = worst_layer(proto, held_out, tmp_path / "cut")
    print(f"{name}: {fidelity.line()}; worst layer {layer_lsb:.2f} LSB ({layer}); float {dict(library.float_ops)}")
    assert set(library.float_ops) <= FLOAT_ALLOWED.get(name, set()), dict(library.float_ops)
    assert layer_lsb <= 1.0 + 1e-4, f"{layer}: {layer_lsb:.2f} LSB fed the same inputs"
    assert fidelity.quantized and fidelity.max_lsb <= COMPILED[name] + 1e-4, fidelity.line()


def test_brecq_on_a_torchscript_export(calib, tmp_path, capsys):
    """BRECQ's simulator runs what the TorchScript export holds once fold-shapes has run (the
    channel shuffles' Reshapes and Transposes, `chunk`'s Slices) and reconstructs every block (a
    few iterations: 20 take minutes)."""
    code, out, err = cli(capsys, "quantize", FOLDER / "shufflenet_v2-torchscript-opset11.onnx", "--calib", calib,
                         "--preset", "w4a8", "--reconstruct", "brecq", "--iters", "2", "--act-iters", "1",
                         "--no-progress", "-o", tmp_path / "brecq")
    assert code == 0, err
    assert "BRECQ block, 2+1 iterations per block" in out, out
