"""A Concat of inputs with very different ranges (a detector's box offsets and scores) is untied:
the narrow input keeps its signal instead of a few steps of the shared scale."""

from __future__ import annotations

import numpy as np
import onnx

import qcompiler
from qcompiler.driver import quantize
from qcompiler.passes import untie_concats
from qcompiler.quant.presets import QuantConfig
from qcompiler.executor import session
from qcompiler.fidelity import run_reference
from qcompiler.models.recipes import corpus


def _scores_sqnr(result, proto) -> float:
    feeds = corpus.sample_inputs(proto, 16, seed=1)
    want = run_reference(session(result.float_model, optimize=False), feeds)[0][0]   # batch fixed at 1
    got = run_reference(session(result.qdq, optimize=False), feeds)[0][0]
    scores = slice(want.shape[1] - 128, None)   # the 8x8x2 score map, after the 8x8x16 boxes
    error = want[:, scores] - got[:, scores]
    return float(10 * np.log10(np.sum(want[:, scores] ** 2) / np.sum(error ** 2)))


def test_narrow_concat_input_is_untied_and_keeps_its_signal(tmp_path, monkeypatch):
    proto = corpus.build("tflite_net", 13)
    onnx.save_model(proto, str(tmp_path / "m.onnx"))
    calib = corpus.sample_inputs(proto, 16)
    untied = qcompiler.quantize(qcompiler.load(tmp_path / "m.onnx"), calib, progress=False)
    assert list(untied.untied) == ["/concat_41"] and "spans 1/" in untied.untied["/concat_41"]
    monkeypatch.setattr(untie_concats, "narrow_concat_inputs", lambda model: {})
    tied = quantize(qcompiler.load(tmp_path / "m.onnx"), calib, QuantConfig(widen_activations=False), progress=False)
    assert not tied.untied and not tied.widened
    # Not untied, the other remedy finds the scores' tensors losing their signal in the shared
    # range (passes/widen_activations.py) and quantizes that group at 16 bits.
    widened = qcompiler.quantize(qcompiler.load(tmp_path / "m.onnx"), calib, progress=False)
    assert "reshape_31" in widened.widened, widened.widened
    before, after, wide = (_scores_sqnr(r, proto) for r in (tied, untied, widened))
    print(f"scores SQNR: tied {before:.1f} dB, untied {after:.1f} dB, tied at 16 bits {wide:.1f} dB")
    assert before < 10 and after >= 20 and wide >= 20
