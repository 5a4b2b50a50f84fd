"""Every registered pass keeps the contract: PassResult back, an honest `modified`, a second run
that changes nothing, and a model that passes the ONNX checker with full_check."""

from __future__ import annotations

import onnx
import pytest

from graphs import BUNDLED_MODELS, LIGHT_MODELS
from qcompiler import ir
from qcompiler.passes import PassResult, registered_passes

# Two light models (one with BN after concat, one plain) and every bundled model.
MODELS = [p for p in LIGHT_MODELS if p.stem in ("light_densenet121", "light_squeezenet")] + BUNDLED_MODELS


@pytest.fixture(scope="module")
def loaded():
    return {p.stem: ir.load(p) for p in MODELS}


@pytest.mark.parametrize("name", sorted(registered_passes()))
@pytest.mark.parametrize("model_name", [p.stem for p in MODELS])
def test_pass_contract(name, model_name, loaded):
    cls = registered_passes()[name]
    model = loaded[model_name].copy()
    before = model.fingerprint()

    result = cls()(model)

    assert isinstance(result, PassResult)
    assert isinstance(result.model, ir.Model)
    assert result.modified == (result.model.fingerprint() != before), "modified must tell the truth"
    again = cls()(result.model.copy())
    assert not again.modified, "a second run must change nothing"
    assert again.model.fingerprint() == result.model.fingerprint()
    onnx.checker.check_model(result.model.to_onnx(), full_check=True)


def test_every_model_is_there():
    assert len(MODELS) == 5


@pytest.mark.parametrize("model_name", ["fashion_resnet8", "fashion_mobilenetv2"])
def test_quantization_passes_contract(model_name, loaded):
    """calibrate-ranges and insert-qdq need annotations (and data): the contract on real ones."""
    from qcompiler import models
    from qcompiler.data import load_data
    from qcompiler.passes import AnnotateQuant, CalibrateRanges, Canonicalize, FoldBatchNorm, InsertQDQ

    model = FoldBatchNorm()(Canonicalize()(loaded[model_name].copy()).model).model
    data = load_data(models.path(models.FASHION_SUBSET), model).head(64)
    steps = [AnnotateQuant(), CalibrateRanges(data, progress=False), InsertQDQ()]
    for step in steps:
        before = model.fingerprint()
        result = step(model.copy())
        assert result.modified and result.model.fingerprint() != before
        again = type(step)(**({"data": data, "progress": False} if isinstance(step, CalibrateRanges) else {}))(
            result.model.copy())
        assert not again.modified and again.model.fingerprint() == result.model.fingerprint()
        onnx.checker.check_model(result.model.to_onnx(), full_check=True)
        model = result.model
