"""Models from the wild (qcompiler.models.recipes.corpus): every exporter-style model inspects,
quantizes (W8A8 and W4A8), compiles for the host with no internal error, and the library follows
its QDQ model as written. One opset per family compiles here (the others in benchmarks/wild.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from graphs import ROOT, cli
from qcompiler.models.recipes import corpus

sys.path.insert(0, str(ROOT / "benchmarks"))
from wild import HELD_OUT, measure  # noqa: E402

COMPILED = {"resnet": 11, "mobilenet_v2": 18, "mobilenet_v3": 17, "efficientnet_lite": 12, "shufflenet": 13,
            "densenet": 9, "inception": 9, "squeezenet": 21, "fpn_detector": 17, "text_recognizer": 20,
            "tflite_net": 13, "lcnet_paddle": 11, "unet": 17}
#: What may stay float in the library, and why: attention (activation x activation MatMul, its
#: scale, softmax), layer norm, the detector's Resize upsampling (its ConvTranspose, kernel =
#: stride, is integer) and sigmoid, the untied
#: Concat of the tflite net's two heads.
FLOAT_ALLOWED = {
    "text_recognizer": {"divide", "matmul", "nn.layer_norm", "nn.log_softmax", "nn.softmax"},
    "fpn_detector": {"image.resize2d", "reshape", "sigmoid"},
    "tflite_net": {"concat", "multiply", "reshape"},  # untied (quant/ties.py)
}
#: Each layer is within 1 LSB of its QDQ model when fed the same inputs. End to end, 1-LSB
#: near-ties grow through later layers (onnxruntime's optimized run drifts alike: 2 LSB on
#: DenseNet and ShuffleNet over 64 inputs): through the squeeze-excitation gates of the two SE nets,
#: the detector's float upsampling (3-8 LSB on under 1% of its elements), MobileNetV2's 2 LSB on
#: 5% of its logits (benchmarks/results/wild.md), the U-Net's 2 LSB on under 2% of its pixels'
#: scores (five layers after its first upsampling; onnxruntime's own run: 18 LSB).
LSB_BOUND = {"mobilenet_v3": 12.0, "lcnet_paddle": 8.0, "fpn_detector": 4.0, "mobilenet_v2": 2.0, "unet": 2.0}


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    paths = {}
    for name, opset in corpus.CORPUS:
        proto = corpus.build(name, opset)
        paths[(name, opset)] = folder / f"{name}-opset{opset}.onnx"
        onnx.save_model(proto, str(paths[(name, opset)]))
        np.savez(folder / f"{name}-opset{opset}.npz", **corpus.sample_inputs(proto, 8))
    return folder


@pytest.mark.parametrize("name,opset", corpus.CORPUS, ids=[f"{n}-{o}" for n, o in corpus.CORPUS])
def test_inspect_and_quantize(name, opset, corpus_dir, capsys):
    model, calib = corpus_dir / f"{name}-opset{opset}.onnx", corpus_dir / f"{name}-opset{opset}.npz"
    code, out, err = cli(capsys, "inspect", model)
    assert code == 0, err
    assert "unsupported none" in out, out   # shape arithmetic folds before the check
    for preset in ("w8a8", "w4a8"):
        code, out, err = cli(capsys, "quantize", model, "--calib", calib, "--preset", preset, "--no-progress",
                             "-o", corpus_dir / f"{name}-{opset}-{preset}")
        assert code == 0, err
        qdq = onnx.load(str(corpus_dir / f"{name}-{opset}-{preset}" / "model.qdq.onnx"))
        assert not {"Shape", "Gather"} & {n.op_type for n in qdq.graph.node}
        batch = qdq.graph.input[0].type.tensor_type.shape.dim[0]
        original = onnx.load(str(model)).graph.input[0].type.tensor_type.shape.dim[0]
        assert bool(batch.dim_param) == bool(original.dim_param), "a dynamic batch stays dynamic in the QDQ model"


@pytest.mark.parametrize("name", sorted(COMPILED))
def test_compiled_library_follows_its_qdq_model(name, tmp_path):
    result = measure(name, COMPILED[name], tmp_path, calib_count=16)
    print(f"{result.model}: max {result.max_lsb:.2f} LSB, {100 * result.exact_share:.1f}% exact, "
          f"worst layer {result.worst_layer_lsb:.2f} LSB, top-1 agreement {100 * result.top1_agreement:.1f}% "
          f"(onnxruntime's own: {result.ort_lsb:.2f} LSB, {100 * result.ort_agreement:.1f}%), "
          f"integer MACs {100 * result.integer_mac_share:.1f}%, "
          f"float {result.float_ops}")
    assert set(result.float_ops) <= FLOAT_ALLOWED.get(name, set()), result.float_ops
    assert result.worst_layer_lsb <= 1.0 + 1e-4, f"{result.worst_layer}: {result.worst_layer_lsb:.2f} LSB fed the same inputs"
    # end to end: within the bound, or no further from the model than onnxruntime's own optimized run
    assert result.max_lsb <= max(LSB_BOUND.get(name, 1.0), result.ort_lsb) + 1e-4, (result.max_lsb, result.ort_lsb)
    # top-1 agreement of at least 99.5%, or (random logits are near ties) as much as onnxruntime's
    # own optimized run keeps with the model as written, give or take one input
    assert result.top1_agreement >= min(0.995, result.ort_agreement - 1.5 / HELD_OUT), \
        (result.top1_agreement, result.ort_agreement)
    assert result.integer_mac_share >= {"text_recognizer": 0.5}.get(name, 0.99)


def test_a_detector_with_dynamic_height_and_width_needs_and_takes_an_input_shape(corpus_dir, tmp_path, capsys):
    """Its QDQ model keeps height and width dynamic only if quantized without data; here the QDQ
    model is written with dynamic dims by hand-restoring them, as a user's QDQ export would be."""
    model, calib = corpus_dir / "fpn_detector-opset17.onnx", corpus_dir / "fpn_detector-opset17.npz"
    code, _, err = cli(capsys, "quantize", model, "--calib", calib, "--no-progress", "-o", tmp_path / "q")
    assert code == 0, err
    qdq = onnx.load(str(tmp_path / "q" / "model.qdq.onnx"))
    dims = qdq.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims[1:]] == [3, 64, 64], "height and width come from the calibration data"
    code, _, err = cli(capsys, "compile", tmp_path / "q" / "model.qdq.onnx", "-o", tmp_path / "lib")
    assert code == 0, err
    dims[2].Clear(), dims[3].Clear()
    dims[2].dim_param, dims[3].dim_param = "height", "width"
    onnx.save_model(qdq, str(tmp_path / "dynamic.qdq.onnx"))
    code, _, err = cli(capsys, "compile", tmp_path / "dynamic.qdq.onnx", "-o", tmp_path / "lib2")
    assert code == 4 and "--input-shape input=1,3,224,224" in err, err
    code, out, err = cli(capsys, "compile", tmp_path / "dynamic.qdq.onnx", "--input-shape", "input=-1,3,64,64",
                         "-o", tmp_path / "lib3")
    assert code == 0, err


@pytest.mark.parametrize("shape", ["1,3,64,64", "input=-1,3,48,48"])
def test_inspect_predicts_the_split_at_a_given_input_shape(shape, corpus_dir, capsys):
    """Unnamed (a one-input model) with the batch fixed, or named with it dynamic: an internal
    error once (the random inputs ignored both)."""
    code, out, err = cli(capsys, "inspect", corpus_dir / "fpn_detector-opset17.onnx", "--input-shape", shape)
    assert code == 0, err
    assert "compile lowers: integer ops: " in out.strip().splitlines()[-1], out


@pytest.mark.parametrize("name,target", [("mobilenet_v3", "arm64-dotprod"), ("shufflenet", "arm64-dotprod"),
                                         ("shufflenet", "arm64-i8mm")])   # its 12-channel grouped conv on smmla
def test_corpus_models_under_qemu(name, target, tmp_path):
    """Cross-compiled for aarch64 (lookup tables, squeeze-excitation, channel shuffle) and run under
    qemu-aarch64 (scripts/setup_aarch64.sh): the same agreement with the QDQ model as on the host."""
    import qcompiler
    from qcompiler.backends.tvm.qemu import QemuLibrary, environment
    from qcompiler.compiler import compile_qdq, write_library
    from qcompiler.fidelity import compare

    environment()   # a UsageError naming scripts/setup_aarch64.sh when it is missing
    proto = corpus.build(name, COMPILED[name])
    onnx.save_model(proto, str(tmp_path / "model.onnx"))
    qdq = qcompiler.quantize(qcompiler.load(tmp_path / "model.onnx"), corpus.sample_inputs(proto, 16),
                             progress=False).qdq
    library = compile_qdq(qdq, target, 2)
    write_library(library, qdq, tmp_path / "lib")
    (fidelity,) = compare(qdq.to_onnx(), QemuLibrary(tmp_path / "lib"), corpus.sample_inputs(proto, 4, seed=1))
    print(f"{name} on {target}: {fidelity.line()}; integer {dict(library.lowered)}")
    assert fidelity.max_lsb <= LSB_BOUND.get(name, 1.0) + 1e-4, fidelity.line()


@pytest.mark.parametrize("name,opset", [("mobilenet_v3", 17), ("text_recognizer", 13)])
def test_inspect_predicts_the_integer_float_split_compile_makes(name, opset, corpus_dir, capsys):
    model, calib = corpus_dir / f"{name}-opset{opset}.onnx", corpus_dir / f"{name}-opset{opset}.npz"
    code, out, err = cli(capsys, "inspect", model)
    assert code == 0, err
    predicted = out.strip().splitlines()[-1].split("compile lowers: ", 1)[1]
    code, out, err = cli(capsys, "compile", model, "--calib", calib, "--no-progress", "-o", corpus_dir / f"{name}-c")
    assert code == 0, err
    made = next(line for line in out.splitlines() if line.startswith("integer ops: "))
    assert predicted == made


@pytest.mark.parametrize("name,opset", [("text_recognizer", 20), ("shufflenet", 11), ("tflite_net", 13),
                                        ("unet", 11)])
def test_brecq_runs_on_exported_models(name, opset, corpus_dir, capsys):
    """The simulator runs what these exports contain (LayerNormalization, Gelu, attention MatMuls,
    LogSoftmax; Split and channel shuffles; a batch fixed at 1; ConvTranspose): BRECQ reconstructs every block (a few
    iterations)."""
    model, calib = corpus_dir / f"{name}-opset{opset}.onnx", corpus_dir / f"{name}-opset{opset}.npz"
    code, out, err = cli(capsys, "quantize", model, "--calib", calib, "--preset", "w4a8", "--reconstruct", "brecq",
                         "--iters", "2", "--act-iters", "1", "--no-progress", "-o", corpus_dir / f"{name}-brecq")
    assert code == 0, err
    assert "BRECQ block, 2+1 iterations per block" in out, out


@pytest.mark.parametrize("name", ["efficientnet_lite", "inception", "squeezenet", "resnet", "shufflenet",
                                  "mobilenet_v3", "densenet", "lcnet_paddle", "unet"])
def test_corpus_models_under_qemu_hexagon(name, tmp_path):
    """Exporter-style models (computed SAME pads and ReduceMean pooling, scale layers, fire
    modules, residual adds, squeeze-excitation gates, pre-activation BatchNorms, transposed convs) compiled for hexagon-v68 and run under qemu-hexagon
    (scripts/setup_hexagon.sh): as close to their QDQ models as the host library is."""
    import qcompiler
    from qcompiler.backends.tvm.qemu_hexagon import QemuHexagonLibrary
    from qcompiler.compiler import compile_qdq, write_library
    from qcompiler.fidelity import compare

    proto = corpus.build(name, COMPILED[name])
    onnx.save_model(proto, str(tmp_path / "model.onnx"))
    qdq = qcompiler.quantize(qcompiler.load(tmp_path / "model.onnx"), corpus.sample_inputs(proto, 16),
                             progress=False).qdq
    library = compile_qdq(qdq, "hexagon-v68", 1)
    write_library(library, qdq, tmp_path / "lib")
    (fidelity,) = compare(qdq.to_onnx(), QemuHexagonLibrary(tmp_path / "lib"), corpus.sample_inputs(proto, 3, seed=1))
    print(f"{name} on hexagon-v68: {fidelity.line()}; kernels {dict(library.kernels)}")
    assert any(kind.startswith("vrmpy") for kind in library.kernels), dict(library.kernels)
    assert fidelity.max_lsb <= LSB_BOUND.get(name, 1.0) + 1e-4, fidelity.line()


def test_float_islands_are_refused_for_hexagon(corpus_dir, tmp_path, capsys):
    """A model that keeps ops in float (the tflite face detector's untied concat) is refused for
    the DSP with the ops named, exit 4, and no output folder."""
    code, _, err = cli(capsys, "compile", corpus_dir / "tflite_net-opset13.onnx", "--calib",
                       corpus_dir / "tflite_net-opset13.npz", "--target", "hexagon-v68", "-o", tmp_path / "lib")
    assert code == 4 and "would run in scalar float on the DSP" in err and "--allow-float" in err, err
    assert not (tmp_path / "lib").exists()
