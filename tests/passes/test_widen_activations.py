"""An activation whose typical values 8 bits would lose (a few far-out values set its range) is
quantized at 16 bits, said by name in the summary; the QDQ model holds INT16 Q/DQ there, and
compiles; models without such a tensor are left alone."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

import qcompiler
from graphs import cli, make_model, make_proto
from qcompiler.compiler import compile_qdq, write_library
from qcompiler.driver import quantize
from qcompiler.fidelity import compare
from qcompiler.models.recipes import corpus
from qcompiler.quant.presets import QuantConfig
from qcompiler.runtime import load

C, H = 8, 12


def _anchored():
    """conv -> + anchors (a detector's decoding: a constant over positions, one far out at -430) -> conv."""
    rng = np.random.default_rng(0)
    anchors = np.zeros((1, C, H, H), np.float32)
    anchors[0, 0, 0, 0] = -430.0
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], name="conv1", pads=[1] * 4),
             helper.make_node("Add", ["a", "anchors"], ["boxes"], name="decode"),
             helper.make_node("Conv", ["boxes", "w2"], ["y"], name="conv2")]
    inits = {"w1": rng.normal(0, 0.3, (C, 4, 3, 3)).astype(np.float32), "anchors": anchors,
             "w2": rng.normal(0, 0.3, (C, C, 1, 1)).astype(np.float32)}
    return make_proto(nodes, [("x", ["N", 4, H, H])], [("y", None)], inits)


def _data(seed: int, count: int = 32) -> dict:
    return {"x": np.random.default_rng(seed).normal(0, 1, (count, 4, H, H)).astype(np.float32)}


def _output_sqnr(run, feeds) -> float:
    from qcompiler.executor import session

    want = session(run.float_model).run(None, feeds)[0]
    got = session(run.qdq, optimize=False).run(None, feeds)[0]
    return float(10 * np.log10(np.sum(want ** 2) / np.sum((want - got) ** 2)))


def test_a_tensor_that_loses_its_bulk_at_8_bits_gets_16():
    model = qcompiler.ir.Model.from_onnx(_anchored())
    wide = qcompiler.quantize(model.copy(), _data(0), progress=False)
    narrow = quantize(model.copy(), _data(0), QuantConfig(widen_activations=False), progress=False)
    assert "boxes" in wide.widened and not narrow.widened
    eight, sixteen = wide.widened["boxes"]
    assert eight < 20 <= sixteen - 30, wide.widened
    zero_points = {n.inputs[0].name: n.inputs[2] for n in wide.qdq.graph.nodes if n.op == "QuantizeLinear"}
    assert np.asarray(zero_points["boxes"].values).dtype in (np.uint16, np.int16)
    before, after = _output_sqnr(narrow, _data(1)), _output_sqnr(wide, _data(1))
    print(f"output SQNR: 8-bit {before:.1f} dB, widened {after:.1f} dB")
    assert before < 25 and after > before + 4   # the output y itself keeps 8 bits (see the next test)


def test_the_widened_model_compiles_and_follows_its_qdq_model(tmp_path):
    run = qcompiler.quantize(qcompiler.ir.Model.from_onnx(_anchored()), _data(0), progress=False)
    library = compile_qdq(run.qdq, "native", 4)
    write_library(library, run.qdq, tmp_path)
    (fidelity,) = compare(run.qdq.to_onnx(), load(tmp_path), _data(2, 8))
    assert fidelity.max_lsb <= 1.0 + 1e-4, fidelity.line()
    assert not library.float_ops, dict(library.float_ops)


def test_a_16_bit_input_that_could_overflow_int32_stays_float(tmp_path):
    """int16 x int8 over 64 x 3 x 3 terms can pass 2**31: that conv runs in float between DQ and Q."""
    rng = np.random.default_rng(3)
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="wide", pads=[1] * 4)]
    model = make_model(nodes, [("x", [1, 64, 6, 6])], [("y", None)], {"w": np.sign(rng.normal(0, 1, (8, 64, 3, 3))).astype(np.float32)})   # all at the grid ends
    feeds = {"x": rng.normal(0, 1, (16, 64, 6, 6)).astype(np.float32)}
    run = qcompiler.quantize(model, feeds, "w8a8", overrides=["wide:abits=16"], progress=False)
    library = compile_qdq(run.qdq, "native", 1)
    write_library(library, run.qdq, tmp_path)
    assert library.float_ops.get("nn.conv2d") == 1, dict(library.float_ops)
    (fidelity,) = compare(run.qdq.to_onnx(), load(tmp_path), {"x": feeds["x"][:1]})
    assert fidelity.max_lsb <= 1.0 + 1e-4, fidelity.line()


@pytest.mark.parametrize("name,opset", [("mobilenet_v3", 17), ("fpn_detector", 17)])
def test_ordinary_models_keep_8_bits(name, opset, tmp_path):
    proto = corpus.build(name, opset)
    onnx.save_model(proto, str(tmp_path / "m.onnx"))
    run = qcompiler.quantize(qcompiler.load(tmp_path / "m.onnx"), corpus.sample_inputs(proto, 16), progress=False)
    assert not run.widened


def test_the_threshold_moves(tmp_path):
    """'y' (the conv after the anchors) keeps 14 dB at 8 bits: degraded, not lost (the default
    12 dB leaves it); at 20 dB it is widened too."""
    model = qcompiler.ir.Model.from_onnx(_anchored())
    default = quantize(model.copy(), _data(0), QuantConfig(), progress=False)
    higher = quantize(model.copy(), _data(0), QuantConfig(widen_below_db=20.0), progress=False)
    assert set(default.widened) == {"boxes"} and set(higher.widened) == {"boxes", "y"}, (default.widened, higher.widened)
    assert _output_sqnr(higher, _data(1)) >= 35


def test_the_summary_names_it_and_the_flag_turns_it_off(tmp_path, capsys):
    onnx.save_model(_anchored(), str(tmp_path / "m.onnx"))
    np.savez(tmp_path / "calib.npz", **_data(0))
    code, out, err = cli(capsys, "quantize", tmp_path / "m.onnx", "--calib", tmp_path / "calib.npz", "--no-progress",
                         "-o", tmp_path / "on")
    assert code == 0, err
    assert "16-bit activation" in out and "boxes: its typical values keep" in out, out
    code, out, err = cli(capsys, "quantize", tmp_path / "m.onnx", "--calib", tmp_path / "calib.npz", "--no-progress",
                         "--no-wide-activations", "-o", tmp_path / "off")
    assert code == 0, err
    assert "16-bit activation" not in out
    code, out, err = cli(capsys, "quantize", tmp_path / "m.onnx", "--calib", tmp_path / "calib.npz", "--no-progress",
                         "--widen-below", "20", "-o", tmp_path / "higher")
    assert code == 0, err
    assert out.count("16-bit activation") == 2, out
