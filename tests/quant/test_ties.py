"""A Concat of inputs with very different ranges (a detector's box offsets and scores) is untied:
the narrow input keeps its signal instead of a few steps of the shared scale."""

from __future__ import annotations

import numpy as np
import onnx

import qcompiler
from qcompiler.passes import untie_concats
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
    tied = qcompiler.quantize(qcompiler.load(tmp_path / "m.onnx"), calib, progress=False)
    assert not tied.untied
    before, after = _scores_sqnr(tied, proto), _scores_sqnr(untied, proto)
    print(f"scores SQNR: tied {before:.1f} dB, untied {after:.1f} dB")
    assert before < 10 and after >= 20
