"""QIL-trained models deploy: W4A4 and W2A2 (ternary weights) compile for this machine and for
arm64 (run under qemu, scripts/setup_aarch64.sh) and follow their QDQ models in onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest

import qcompiler
from graphs import ROOT
from qcompiler.backends.tvm.runtime import load
from qcompiler.compiler import compile_qdq, write_library
from qcompiler.executor import session
from qcompiler.fidelity import compare
from qcompiler.training import QILConfig

DATA = np.load(ROOT / "models" / "fashion_mnist_subset.npz")


@pytest.fixture(scope="module", params=["w4a4", "w2a2"])
def trained(request):
    run = qcompiler.quantize(ROOT / "models" / "fashion_resnet8.onnx", {"input": DATA["input"][:64]}, request.param,
                             progress=False, train=QILConfig(epochs=1, batch_size=32, labels=True),
                             train_data={"input": DATA["input"][:128], "labels": DATA["labels"][:128]})
    return request.param, run.qdq


def _library(qdq, target, folder):
    library = compile_qdq(qdq, target, 16)
    write_library(library, qdq, folder)
    if target == "native":
        return library, load(folder)
    from qcompiler.backends.tvm.qemu import QemuLibrary, environment

    environment()   # a UsageError naming scripts/setup_aarch64.sh when it is missing
    return library, QemuLibrary(folder)


@pytest.mark.parametrize("target", ["native", "arm64-dotprod"])
def test_qil_model_compiles_and_follows_its_qdq_model(trained, target, tmp_path):
    preset, qdq = trained
    feeds = {"input": DATA["input"][128:192]}
    library, runner = _library(qdq, target, tmp_path)
    (fidelity,) = compare(qdq.to_onnx(), runner, feeds)
    print(f"QIL {preset} {target}: {fidelity.line()}; kernels {dict(library.kernels)}")
    assert not library.float_ops, dict(library.float_ops)
    assert fidelity.max_lsb <= 1.0 + 1e-4, fidelity.line()
    reference = session(qdq.to_onnx(), optimize=False).run(None, feeds)[0]
    assert np.mean(runner.run(feeds)["logits"].argmax(1) == reference.argmax(1)) >= 0.99
