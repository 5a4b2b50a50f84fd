"""fold-shapes: shape arithmetic folds to constants at fixed input shapes, the function is
unchanged (onnxruntime before vs after, at several batch sizes), and a dynamic batch survives."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import pytest
from onnx import helper

from graphs import make_proto
from qcompiler import ir, testing
from qcompiler.errors import UnsupportedModelError
from qcompiler.models.recipes import corpus
from qcompiler.passes import FoldShapes

SHAPE_OPS = {"Shape", "Size", "Gather", "Slice", "Unsqueeze", "ConstantOfShape", "Range"}
WITH_SHAPE_ARITHMETIC = [(n, o) for n, o in corpus.CORPUS if n in
                         ("resnet", "mobilenet_v3", "efficientnet_lite", "shufflenet", "inception", "fpn_detector")]


def _model(proto: onnx.ModelProto) -> ir.Model:
    return ir.Model.from_onnx(onnx.shape_inference.infer_shapes(proto, data_prop=True))


@pytest.mark.parametrize("name,opset", WITH_SHAPE_ARITHMETIC, ids=[f"{n}-{o}" for n, o in WITH_SHAPE_ARITHMETIC])
def test_corpus_shape_arithmetic_folds_and_the_batch_stays_dynamic(name, opset):
    proto = corpus.build(name, opset)
    sample = corpus.sample_inputs(proto, 1)
    shapes = {k: (-1, *v.shape[1:]) for k, v in sample.items()} if name == "fpn_detector" else None
    folder = FoldShapes(shapes)
    result = folder(_model(proto))
    assert result.modified
    assert not SHAPE_OPS & {n.op for n in result.model.graph.nodes}, "shape arithmetic left"
    assert folder.fixed_batch is None
    assert not isinstance(result.model.graph.inputs[0].shape[0], int), "the batch must stay dynamic"
    for batch in (1, 3):   # neither is a batch the folder probed with
        feeds = corpus.sample_inputs(proto, batch, seed=batch)
        for got, want in zip(testing.run(result.model, feeds), testing.run(ir.Model.from_onnx(proto), feeds)):
            testing.assert_close(got, want, what=f"{name} batch {batch}")


def test_a_batch_dependent_constant_that_no_reshape_target_expresses_fixes_the_batch(caplog):
    """ConstantOfShape([N, 4]) holds the batch in a tensor, not a Reshape target: batch fixed, said."""
    nodes = [helper.make_node("Shape", ["x"], ["s"], start=0, end=1),
             helper.make_node("Concat", ["s", "four"], ["shape"], axis=0),
             helper.make_node("ConstantOfShape", ["shape"], ["ones"], value=helper.make_tensor("v", 1, [1], [1.0])),
             helper.make_node("Add", ["x", "ones"], ["y"])]
    proto = make_proto(nodes, [("x", ["N", 4])], [("y", None)], {"four": np.array([4], np.int64)})
    folder = FoldShapes()
    with caplog.at_level(logging.WARNING):
        result = folder(ir.Model.from_onnx(proto))
    assert folder.fixed_batch == 2 and "fixed at batch 2" in caplog.text
    assert result.model.graph.inputs[0].shape[0] == 2


def test_a_given_shape_that_contradicts_a_static_dimension_is_refused():
    proto = corpus.build("resnet", 17)
    with pytest.raises(UnsupportedModelError, match="size 3 in dimension 1"):
        FoldShapes({"input": (1, 4, 32, 32)})(_model(proto))


def test_nothing_to_fold_is_not_a_change():
    proto = corpus.build("mobilenet_v2", 13)
    model = _model(proto)
    assert not FoldShapes()(model).modified
